"""The HTTP API: submit a job (202 + Location), read its status and result.

A submit answers 202 only after Kafka acknowledged both the request (on
``jobs.requested``) and its ``queued`` event (on ``jobs.events``); anything else
is a 503 and the client may retry.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest_api import listing
from ingest_api.auth import current_tenant, tenant_of
from ingest_api.backpressure import LagMonitor
from ingest_api.idempotency import IdempotencyKeys
from ingest_api.problems import PROBLEM_JSON, Problem, ProblemDetails, field_errors, problem_responses
from ingest_api.recent import RecentJobs
from ingest_api.submit import InvalidSubmission, JobSubmission, idempotent_job_id, prepare, publish
from processors.calculations import registry
from sink.store import ClickHouseStore
from streams.control import cancel_record
from streams.events import JobStatus, JobView
from streams.producer import ProduceError
from streams.settings import Settings

logger = logging.getLogger(__name__)

_Body = TypeVar("_Body", bound=BaseModel)
_QUEUED = JobStatus.QUEUED.value
_MAX_KEY_LENGTH = 255  # of an Idempotency-Key

# Every route may answer these (bad JSON, missing key, invalid parameters); routes add their own.
router = APIRouter(responses=problem_responses(400, 401, 413, 415, 422))


class Links(BaseModel):
    self: str
    events: str
    result: str


class Accepted(BaseModel):
    job_id: str
    status: JobStatus
    links: Links


class JobOut(BaseModel):
    job_id: str
    kind: str
    status: JobStatus
    progress: float
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    replay_of: str | None = Field(default=None, description="For a replayed job: the job it re-runs.")
    links: Links


def links_for(request: Request, job_id: str) -> Links:
    return Links(**_links(request, job_id))


def _links(request: Request, job_id: str) -> dict[str, str]:
    settings: Settings = request.app.state.settings
    path = f"{(settings.public_url or '').rstrip('/')}/v1/jobs/{job_id}"
    return {"self": path, "events": f"{path}/events", "result": f"{path}/result"}


async def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(415, "Unsupported media type", "send the body as application/json",
                      headers={"Accept-Post": "application/json"})


def _admit(request: Request) -> None:
    """429 when the processors are already further behind than the configured bound."""
    lag: LagMonitor | None = getattr(request.app.state, "lag", None)
    if lag is not None and lag.overloaded:
        retry = lag.retry_after_s()
        raise Problem(429, "Too many queued jobs", f"{lag.lag} jobs are waiting; retry in about {retry}s",
                      headers={"Retry-After": str(retry)}, queued_jobs=lag.lag)


def _retry_after(request: Request) -> str:
    lag: LagMonitor | None = getattr(request.app.state, "lag", None)
    return str(lag.retry_after_s(lag.lag + 1) if lag is not None else request.app.state.settings.retry_after_s)


def _unavailable(request: Request, exc: ProduceError) -> Problem:
    logger.warning("Kafka did not acknowledge: %s", exc)
    return Problem(503, "Kafka unavailable", "the job was not accepted; retry later",
                   headers={"Retry-After": str(request.app.state.settings.retry_after_s)})


def _invalid(exc: InvalidSubmission) -> Problem:
    return Problem(422, exc.title, exc.detail, errors=exc.errors, **exc.extensions)


def _accepted(request: Request, job_id: str, status_code: int = 202) -> Response:
    """The ``Accepted`` body, serialised directly (it is built from our own fields, nothing to validate)."""
    links = _links(request, job_id)
    body = orjson.dumps({"job_id": job_id, "status": _QUEUED, "links": links})
    return Response(body, status_code=status_code, media_type="application/json",
                    headers={"Location": links["self"], "Retry-After": _retry_after(request)})


def _json_body(model: type[_Body], raw: bytes) -> _Body:
    """Parse and validate a JSON body in one step, with the errors FastAPI's body parameter gives
    (400 malformed JSON, 422 naming each field), for routes that read the body themselves."""
    if not raw:
        raise Problem(422, "Invalid request", "see 'errors'", errors=[{"field": "(body)", "reason": "Field required"}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(e["type"] == "json_invalid" for e in errors):
            raise Problem(400, "Malformed JSON", "the request body is not valid JSON") from None
        raise Problem(422, "Invalid request", "see 'errors'", errors=field_errors(errors)) from None


# POST /v1/jobs reads its body and header itself (see ``submit``), so the OpenAPI document gets them here.
_SUBMIT_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobSubmission.model_json_schema()}}},
    "parameters": [{"in": "header", "name": "idempotency-key", "required": False, "schema": {
        "anyOf": [{"type": "string", "maxLength": _MAX_KEY_LENGTH}, {"type": "null"}], "title": "Idempotency-Key"}}],
}


@router.post("/v1/jobs", status_code=202, response_model=None, openapi_extra=_SUBMIT_OPENAPI, responses={
    202: {"model": Accepted, "description": "Accepted: Kafka acknowledged the job; poll Location"},
    200: {"model": Accepted, "description": "Same Idempotency-Key and body as an earlier request: that job"},
    **problem_responses(409, 429, 503, s409="Idempotency-Key reused with another body"),
})
async def submit(request: Request) -> Response:
    """Accept a job: 202 once Kafka acknowledged it. With Idempotency-Key, a retry returns the same job."""
    # The API's hot path: body, header and tenant are read here rather than by FastAPI's parameter
    # machinery and the answer is serialised directly, so that ``shortcut.SubmitShortcut`` can call
    # this with a bare Request (docs/benchmarks.md, "Ingest API"). The contract is unchanged.
    await _require_json(request)
    tenant = tenant_of(request)
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > _MAX_KEY_LENGTH:
        raise Problem(422, "Invalid request", "see 'errors'", errors=[{
            "field": "header.idempotency-key", "reason": f"String should have at most {_MAX_KEY_LENGTH} characters"}])
    body = _json_body(JobSubmission, await request.body())
    if idempotency_key is None:
        return await _submit_once(body, request, tenant, None)
    keys: IdempotencyKeys = request.app.state.idempotency
    with await keys.exclusive(tenant, idempotency_key):
        return await _submit_once(body, request, tenant, idempotency_key)


async def _submit_once(body: JobSubmission, request: Request, tenant: str, idempotency_key: str | None) -> Response:
    settings: Settings = request.app.state.settings
    extra = []
    job_id = None
    if idempotency_key is not None:
        keys: IdempotencyKeys = request.app.state.idempotency
        fingerprint = body.fingerprint()
        seen = keys.lookup(tenant, idempotency_key)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise Problem(409, "Idempotency-Key reused", "this key was used with a different request body",
                              errors=[{"field": "Idempotency-Key", "reason": "reused with a different body"}])
            return _accepted(request, seen.job_id, 200)
        job_id = idempotent_job_id(tenant, idempotency_key)
        key_record, entry = keys.record(tenant, idempotency_key, job_id, fingerprint)
        extra.append(key_record)
    _admit(request)
    try:
        job = prepare(body, tenant, job_id)
    except InvalidSubmission as exc:
        raise _invalid(exc) from None
    recent: RecentJobs = request.app.state.recent
    recent.add(job.queued)  # before the send: the fanout may see this job's next events before we resume
    try:
        await publish(request.app.state.producer, settings, [job], extra)
    except ProduceError as exc:
        recent.discard(tenant, job.job_id)
        raise _unavailable(request, exc) from None
    if idempotency_key is not None:
        keys.remember(tenant, idempotency_key, entry)
    # debug, not info: one line per job is a log line per request at thousands per second.
    logger.debug("accepted job %s", job.job_id, extra={"job_id": job.job_id, "tenant": tenant, "kind": body.kind})
    return _accepted(request, job.job_id)


class BatchSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Any] = Field(min_length=1, description="Job submissions, validated one by one.")


class BatchItem(BaseModel):
    index: int
    job_id: str | None = None
    status: JobStatus | None = None
    links: Links | None = None
    error: dict[str, Any] | None = None


class BatchAccepted(BaseModel):
    accepted: int
    rejected: int
    jobs: list[BatchItem]


@router.post("/v1/jobs:batch", status_code=202, response_model=None, dependencies=[Depends(_require_json)],
             responses={
    202: {"model": BatchAccepted, "description": "At least one job accepted"},
    422: {"model": BatchAccepted, "description": "No job valid (each item says why)", "content": {
        PROBLEM_JSON: {"schema": ProblemDetails.model_json_schema()}}},
    **problem_responses(429, 503),
})
async def submit_batch(body: BatchSubmission, request: Request, tenant: str = Depends(current_tenant)) -> Response:
    """Accept many jobs in one request and one Kafka flush; each invalid job gets its own error."""
    settings: Settings = request.app.state.settings
    if len(body.jobs) > settings.batch_max_jobs:
        raise Problem(422, "Too many jobs", f"at most {settings.batch_max_jobs} jobs per batch",
                      errors=[{"field": "jobs", "reason": f"more than {settings.batch_max_jobs} items"}])
    _admit(request)
    items: list[dict[str, Any]] = []  # BatchItem's fields, every one present (null when unset)
    ready = []
    for index, raw in enumerate(body.jobs):
        try:
            job = prepare(JobSubmission.model_validate(raw), tenant)
        except ValidationError as exc:
            errors = field_errors(exc.errors(), ("jobs", str(index)))
            items.append(_batch_item(index, error=InvalidSubmission("Invalid job", "see 'errors'", errors).problem()))
            continue
        except InvalidSubmission as exc:
            problem = exc.problem()
            problem["errors"] = [{**e, "field": f"jobs.{index}.{e['field']}"} for e in exc.errors]
            items.append(_batch_item(index, error=problem))
            continue
        ready.append(job)
        items.append(_batch_item(index, job.job_id, _links(request, job.job_id)))
    headers = {}
    if ready:
        recent: RecentJobs = request.app.state.recent
        for job in ready:
            recent.add(job.queued)
        try:
            await publish(request.app.state.producer, settings, ready)
        except ProduceError as exc:
            for job in ready:
                recent.discard(tenant, job.job_id)
            raise _unavailable(request, exc) from None
        headers["Retry-After"] = _retry_after(request)
    # Serialised directly, like a single submit's answer: validating 1,000 items we built ourselves
    # against BatchAccepted cost more than producing them.
    body_bytes = orjson.dumps({"accepted": len(ready), "rejected": len(body.jobs) - len(ready), "jobs": items})
    return Response(body_bytes, status_code=202 if ready else 422, media_type="application/json", headers=headers)


def _batch_item(index: int, job_id: str | None = None, links: dict[str, str] | None = None,
                error: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"index": index, "job_id": job_id, "status": _QUEUED if job_id else None, "links": links, "error": error}


class JobSummary(BaseModel):
    job_id: str
    kind: str
    status: JobStatus
    submitted_at: datetime
    updated_at: datetime
    links: Links


class JobPage(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


@router.get("/v1/jobs", response_model=JobPage)
async def list_jobs(request: Request, tenant: str = Depends(current_tenant),
                    status: JobStatus | None = None, kind: str | None = None,
                    since: datetime | None = None, until: datetime | None = None,
                    limit: int = Query(default=50, ge=1), cursor: str | None = None) -> JobPage:
    """The caller's jobs, newest first; filter by status, kind and submission time."""
    settings: Settings = request.app.state.settings
    for name, value in (("since", since), ("until", until)):
        if value is not None and not 1970 <= value.year <= 2200:
            raise Problem(422, "Invalid request", f"{name} must be between 1970 and 2200",
                          errors=[{"field": name, "reason": "out of range (1970..2200)"}])
    if limit > settings.list_max_limit:
        raise Problem(422, "Invalid request", f"limit is at most {settings.list_max_limit}",
                      errors=[{"field": "limit", "reason": f"at most {settings.list_max_limit}"}])
    try:
        rows, next_cursor = await asyncio.to_thread(
            listing.list_jobs, request.app.state.store, tenant, status=status, kind=kind, since=since,
            until=until, limit=limit, cursor=cursor)
    except listing.BadCursor:
        raise Problem(400, "Bad cursor", "use the next_cursor of a previous page",
                      errors=[{"field": "cursor", "reason": "not a cursor of this API"}]) from None
    return JobPage(jobs=[JobSummary(**row, links=links_for(request, row["job_id"])) for row in rows],
                   next_cursor=next_cursor)


async def load_view(request: Request, tenant: str, job_id: str) -> JobView:
    """The job's state from the store, or from the recent-accepts cache if the sink lags; else 404."""
    store: ClickHouseStore = request.app.state.store
    recent: RecentJobs = request.app.state.recent
    events = await store.ajob_events(tenant, job_id)
    view = JobView.fold(events + recent.events(tenant, job_id))
    if view is None:
        raise Problem(404, "Job not found", f"no job {job_id!r}")
    return view


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses=problem_responses(404))
async def status(job_id: str, request: Request, response: Response, tenant: str = Depends(current_tenant)) -> JobOut:
    view = await load_view(request, tenant, job_id)
    if not view.status.terminal:
        response.headers["Retry-After"] = _retry_after(request)
    return JobOut(**view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=links_for(request, job_id))


@router.get("/v1/jobs/{job_id}/result", responses={
    200: {"description": "The result", "content": {"application/json": {"schema": {"type": "object"}}}},
    202: {"description": "Not finished yet: poll Location after Retry-After"},
    **problem_responses(404, 409, s409="The job failed or was cancelled"),
})
async def result(job_id: str, request: Request, tenant: str = Depends(current_tenant)) -> Any:
    view = await load_view(request, tenant, job_id)
    if view.status is JobStatus.SUCCEEDED:
        return {"job_id": job_id, "calc_version": view.calc_version, "result": view.result}
    if view.status.terminal:
        raise Problem(409, f"Job {view.status.value}", "there is no result", error=view.error)
    links = links_for(request, job_id)
    return Response(status_code=202, headers={"Location": links.self, "Retry-After": _retry_after(request)})


@router.delete("/v1/jobs/{job_id}", status_code=202, response_model=JobOut,
                responses=problem_responses(404, 409, 503, s409="The job already finished"))
async def cancel(job_id: str, request: Request, response: Response, tenant: str = Depends(current_tenant)) -> JobOut:
    """Ask the processors to cancel the job: a queued job never starts, a running one stops at its next
    progress point. The job ends ``cancelled`` (watch its events or poll its status)."""
    view = await load_view(request, tenant, job_id)
    if view.status.terminal:
        raise Problem(409, f"Job already {view.status.value}", "a finished job cannot be cancelled",
                      status_now=view.status.value)
    try:
        await request.app.state.producer.send_many([cancel_record(request.app.state.settings, job_id, tenant)])
    except ProduceError as exc:
        raise _unavailable(request, exc) from None
    links = links_for(request, job_id)
    response.headers["Location"] = links.self
    response.headers["Retry-After"] = _retry_after(request)
    return JobOut(**view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=links)


router.add_api_route("/v1/jobs/{job_id}:cancel", cancel, methods=["POST"], status_code=202, response_model=JobOut,
                     responses=problem_responses(404, 409, 503, s409="The job already finished"),
                     summary="Cancel (for clients that cannot send DELETE)")


@router.get("/v1/kinds")
async def kinds() -> list[dict[str, Any]]:
    return [
        {"kind": c.kind, "version": c.version, "versions": registry.versions(c.kind), "description": c.description,
         "params": c.params.model_json_schema()}
        for c in registry.kinds()
    ]

