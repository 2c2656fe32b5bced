"""The HTTP API: submit a job (202 + Location), read its status and result.

A submit answers 202 only after Kafka acknowledged both the request (on
``jobs.requested``) and its ``queued`` event (on ``jobs.events``). A 503 says
whether the job surely was not accepted (``outcome: not_accepted``) or Kafka did
not answer in time and the job may still land (``outcome: unknown``, with the
job id): a retry with the same ``Idempotency-Key`` is then always safe.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calculations import registry
from edge.auth import current_tenant, tenant_of
from edge.idempotency_key import OPENAPI_SCHEMA, idempotency_key_of
from edge.problems import MAX_LISTED_ERRORS, PROBLEM_JSON, Problem, ProblemDetails, problem_responses, validation_errors
from edge.webhook_url import WebhookPolicy
from ingest_api import listing
from ingest_api.admission import Admission
from ingest_api.backpressure import LagMonitor, SubmitSlots
from ingest_api.idempotency import IdempotencyKeys, PendingKey
from ingest_api.reuse import Claim, Found, ReuseIndex, StillUnknown
from ingest_api.submit import (
    InvalidSubmission,
    JobSubmission,
    Prepared,
    Reusable,
    idempotent_job_id,
    prepare_reusable,
    prepare_validated,
    publish,
    records,
)
from ingest_api.waits import JobWaits, parse_prefer, wait_seconds
from store.jobs import job_view
from store.recent import RecentJobs
from streams.backlog import TenantBacklog
from streams.control import cancel_record
from streams.events import EventType, JobEvent, JobStatus, JobView
from streams.producer import Outgoing, ProduceError
from streams.settings import Settings
from telemetry import metrics, tracing

logger = logging.getLogger(__name__)

_Body = TypeVar("_Body", bound=BaseModel)
_T = TypeVar("_T")
_QUEUED = JobStatus.QUEUED.value
SUBMIT_ROUTE = "/v1/jobs"  # route labels of the submission metrics
BATCH_ROUTE = "/v1/jobs:batch"

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
    params: dict[str, Any] | None = Field(
        default=None, description="The params it was submitted with (null for jobs queued before they were kept)."
    )
    queue_position: int | None = Field(
        default=None,
        description="While queued: jobs (every tenant's) still waiting that were queued before this one, "
        "as this API process counts them. An estimate: priorities and fair sharing reorder jobs.",
    )
    start_eta_s: float | None = Field(
        default=None,
        description="While queued: seconds until it likely starts, queue_position over the measured start "
        "rate (null before a start was measured).",
    )
    links: Links


class Reused(JobOut):
    """The answer to a submit with ``reuse`` that an earlier, succeeded job answered."""

    reused_from: str = Field(description="The earlier job whose result this is (also job_id and Location).")


class Joined(Accepted):
    """The answer to a submit with ``reuse`` that joined an identical queued or running job."""

    reused_from: str = Field(description="The job joined (also job_id and Location).")


def links_for(request: Request, job_id: str) -> Links:
    return Links(**_links(request, job_id))


def _links(request: Request, job_id: str) -> dict[str, str]:
    return _links_from(request.app.state.settings, job_id)


def _links_from(settings: Settings, job_id: str) -> dict[str, str]:
    path = f"{(settings.public_url or '').rstrip('/')}/v1/jobs/{job_id}"
    return {"self": path, "events": f"{path}/events", "result": f"{path}/result"}


async def _require_json(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(
            415,
            "Unsupported media type",
            "send the body as application/json",
            headers={"Accept-Post": "application/json"},
        )


def _admit(request: Request) -> None:
    """429 when the processors are already further behind than the configured bound."""
    lag: LagMonitor | None = getattr(request.app.state, "lag", None)
    if lag is not None and lag.overloaded:
        retry = lag.retry_after_s()
        raise Problem(
            429,
            "Too many queued jobs",
            f"{lag.lag} jobs are waiting; retry in about {retry}s",
            headers={"Retry-After": str(retry)},
            queued_jobs=lag.lag,
        )


def _admit_tenant(request: Request, tenant: str, n: int) -> TenantBacklog | None:
    """429 when ``tenant`` is at its own cap on waiting jobs or past its rate (others are not touched);
    returns the backlog that counts the jobs (``hold`` them before producing)."""
    admission: Admission | None = getattr(request.app.state, "admission", None)
    if admission is None:
        return None
    admission.check(tenant, n)
    return admission.backlog


def _retry_after(request: Request) -> str:
    lag: LagMonitor | None = getattr(request.app.state, "lag", None)
    settings: Settings = request.app.state.settings
    return str(
        lag.retry_after_s(lag.lag + 1) if lag is not None else min(settings.retry_after_s, settings.retry_after_max_s)
    )


def _outage_retry_after(settings: Settings) -> str:
    """While Kafka does not answer, a slot frees up within about one produce timeout."""
    return str(max(1, min(math.ceil(settings.produce_timeout_s), settings.retry_after_max_s)))


def _unavailable(request: Request, exc: ProduceError, job_ids: list[str], keyed: bool = False) -> Problem:
    """503 for a produce that failed: 'not accepted' only when nothing was handed to Kafka, else
    'outcome unknown' with the job id(s) the records carry (they may still land and run)."""
    settings: Settings = request.app.state.settings
    headers = {"Retry-After": _outage_retry_after(settings)}
    if exc.outcome is None:
        logger.warning("Kafka refused the records: %s", exc)
        return Problem(
            503,
            "Kafka unavailable",
            "the job was not accepted (nothing was written); retry later",
            headers=headers,
            outcome="not_accepted",
        )
    logger.warning("Kafka did not acknowledge: %s", exc, extra={"job_ids": job_ids[:10]})
    if keyed:
        advice = "Retry with the same Idempotency-Key: it answers with this job and never makes a second one."
    else:
        advice = (
            f"Poll links.self: it shows the job once it landed; a 404 after JOBSTREAM_DELIVERY_TIMEOUT_S "
            f"({settings.delivery_timeout_s:g}s) means it never will. A retry without an Idempotency-Key "
            f"may make a second job."
        )
    detail = (
        f"Kafka did not acknowledge within {settings.produce_timeout_s:g}s: the outcome is unknown; the job "
        f"may still be accepted and run. {advice}"
    )
    if len(job_ids) == 1:
        return Problem(
            503,
            "Outcome unknown",
            detail,
            headers=headers,
            outcome="unknown",
            job_id=job_ids[0],
            links=_links(request, job_ids[0]),
        )
    return Problem(503, "Outcome unknown", detail, headers=headers, outcome="unknown", job_ids=job_ids)


@contextmanager
def _submit_slot(request: Request) -> Iterator[None]:
    """Hold one of JOBSTREAM_MAX_SUBMITS_IN_FLIGHT slots while waiting for Kafka, or 503 at once."""
    submits: SubmitSlots = request.app.state.submits
    if not submits.acquire():
        settings: Settings = request.app.state.settings
        raise Problem(
            503,
            "Too many submits in flight",
            f"{submits.in_flight} submits are waiting for Kafka; the job was not accepted, retry later",
            headers={"Retry-After": _outage_retry_after(settings)},
            outcome="not_accepted",
        )
    try:
        yield
    finally:
        submits.release()


def _invalid(exc: InvalidSubmission) -> Problem:
    return Problem(422, exc.title, exc.detail, errors=exc.errors, **exc.extensions)


def _item_problem(title: str, detail: str, errors: list[dict[str, str]], **extensions: Any) -> dict[str, Any]:
    """A rejected batch item's problem details: the 422 the job alone would get."""
    return {"type": "about:blank", "title": title, "status": 422, "detail": detail, "errors": errors, **extensions}


def _accepted(request: Request, job_id: str, status_code: int = 202, trace: tracing.JobTrace | None = None) -> Response:
    """The ``Accepted`` body, serialised directly (it is built from our own fields, nothing to validate);
    ``trace``: the job's trace context, answered as the ``traceparent`` header."""
    links = _links(request, job_id)
    body = orjson.dumps({"job_id": job_id, "status": _QUEUED, "links": links})
    headers = {"Location": links["self"], "Retry-After": _retry_after(request)}
    if trace is not None:
        headers["traceparent"] = trace.traceparent
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


async def traced(name: str, request: Request, handle: Callable[[tracing.JobTrace | None], Any]) -> Response:
    """``handle(trace)`` within the trace of a request that creates jobs: its W3C ``traceparent`` is
    continued (a malformed one ignored), and the server span (when tracing) ends with the answer."""
    trace = tracing.from_http(name, request.headers)
    if trace is None:
        return await handle(None)
    with tracing.ending_on_error(trace):
        response: Response = await handle(trace)
    trace.end(str(response.status_code))
    return response


def _json_body(model: type[_Body], raw: bytes, max_errors: int = MAX_LISTED_ERRORS) -> _Body:
    """Parse and validate a JSON body in one step, with the errors FastAPI's body parameter gives
    (400 malformed JSON, 422 naming each field), for routes that read the body themselves."""
    if not raw:
        raise Problem(422, "Invalid request", "see 'errors'", errors=[{"field": "(body)", "reason": "Field required"}])
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        if exc.error_count() == 1 and exc.errors(include_url=False)[0]["type"] == "json_invalid":
            raise Problem(400, "Malformed JSON", "the request body is not valid JSON") from None
        errors, count = validation_errors(exc, limit=max_errors)
        raise Problem(422, "Invalid request", "see 'errors'", errors=errors, error_count=count) from None


async def _off_loop(settings: Settings, size: int, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` on a worker thread for a body over JOBSTREAM_OFFLOAD_BODY_BYTES, so that parsing
    and validating it never holds up the event loop (other requests, /healthz, SSE); inline otherwise."""
    if size > settings.offload_body_bytes:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


@dataclass(frozen=True)
class _Parsed:
    job: Prepared
    fingerprint: str | None
    body: JobSubmission
    reusable: Reusable | None = None


def _parse_submit(
    raw: bytes,
    tenant: str,
    job_id: str | None,
    keyed: bool,
    max_errors: int,
    webhooks: WebhookPolicy,
    reuse_max_age_s: float,
    max_start_within_s: float,
) -> _Parsed:
    """Body → validated job records (and the fingerprint a key needs, the reuse key reuse needs);
    raises Problem. Pure and CPU-bound."""
    body = _json_body(JobSubmission, raw, max_errors)
    reusable = None
    try:
        if body.reuse is None:
            job = prepare_validated(
                body, tenant, job_id, max_errors, webhooks=webhooks, max_start_within_s=max_start_within_s
            )[0]
        else:
            job, reusable = prepare_reusable(
                body, tenant, reuse_max_age_s, job_id, max_errors, webhooks, max_start_within_s
            )
    except InvalidSubmission as exc:
        raise _invalid(exc) from None
    return _Parsed(job, body.fingerprint() if keyed else None, body, reusable)


# POST /v1/jobs reads its body and header itself (see ``submit``), so the OpenAPI document gets them here.
_SUBMIT_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobSubmission.model_json_schema()}}},
    "parameters": [
        {
            "in": "header",
            "name": "idempotency-key",
            "required": False,
            "schema": {
                "anyOf": [
                    OPENAPI_SCHEMA,
                    {"type": "null"},
                ],
                "title": "Idempotency-Key",
            },
        },
        {
            "in": "header",
            "name": "prefer",
            "required": False,
            "description": "RFC 7240: `wait=S` answers 200 with the finished job if it finishes within S seconds "
            "(at most JOBSTREAM_MAX_WAIT_S), else the usual 202; `respond-async` (or nothing) answers 202 at once.",
            "schema": {"anyOf": [{"type": "string", "maxLength": 1000}, {"type": "null"}], "title": "Prefer"},
        },
    ],
}


@router.post(
    "/v1/jobs",
    status_code=202,
    response_model=None,
    openapi_extra=_SUBMIT_OPENAPI,
    responses={
        202: {
            "model": Accepted | Joined,
            "description": "Accepted: Kafka acknowledged the job; poll Location. With reuse, possibly an "
            "identical queued or running job joined (reused_from)",
        },
        200: {
            "model": Accepted | JobOut | Reused,
            "description": "Same Idempotency-Key and body as an earlier request: that job; with "
            "`Prefer: wait=S`, the job finished within S seconds: its status (a JobOut, with the result); or, "
            "with reuse, an identical job that succeeded within max_age_s: its status with the result and reused_from",
        },
        **problem_responses(409, 429, 503, s409="Idempotency-Key reused with another body"),
    },
)
async def submit(request: Request) -> Response:
    """Accept a job: 202 once Kafka acknowledged it. With Idempotency-Key, a retry returns the same job."""
    if "traceparent" not in request.headers and not tracing.enabled():  # the hot path: no trace
        return await _submit(request, None)
    return await traced("jobstream.submit", request, lambda trace: _submit(request, trace))


async def _submit(request: Request, trace: tracing.JobTrace | None) -> Response:
    # The API's hot path: body, header and tenant are read here rather than by FastAPI's parameter
    # machinery and the answer is serialised directly, so that ``shortcut.SubmitShortcut`` can call
    # this with a bare Request (docs/benchmarks.md, "Ingest API"). The contract is unchanged.
    kind = None
    try:
        await _require_json(request)
        tenant = tenant_of(request)
        idempotency_key = idempotency_key_of(request)
        settings: Settings = request.app.state.settings
        prefer = request.headers.getlist("prefer")
        wait_s = parse_prefer(prefer, settings.max_wait_s).wait_s if prefer else None
        raw = await request.body()
        job_id = idempotent_job_id(tenant, idempotency_key) if idempotency_key is not None else None
        parsed = await _off_loop(
            settings,
            len(raw),
            _parse_submit,
            raw,
            tenant,
            job_id,
            idempotency_key is not None,
            settings.max_listed_errors,
            request.app.state.webhook_policy,
            settings.reuse_max_age_s,
            settings.max_start_within_s,
        )
        kind = parsed.job.kind
        if wait_s is None:
            return await _submit_job(parsed, request, tenant, idempotency_key, trace)
        return await _submit_and_wait(parsed, request, tenant, idempotency_key, wait_s, trace)
    except Problem as exc:
        metrics.rejected(SUBMIT_ROUTE, kind, exc.status)
        raise


async def _submit_job(
    parsed: _Parsed, request: Request, tenant: str, idempotency_key: str | None, trace: tracing.JobTrace | None = None
) -> Response:
    with _submit_slot(request):
        if idempotency_key is None:
            if parsed.reusable is not None:
                return await _reusing(parsed, parsed.reusable, request, tenant, None, trace)
            return await _submit_once(parsed, request, tenant, None, trace)
        keys: IdempotencyKeys = request.app.state.idempotency
        with await keys.exclusive(tenant, idempotency_key):
            return await _submit_once(parsed, request, tenant, idempotency_key, trace)


async def _submit_and_wait(
    parsed: _Parsed,
    request: Request,
    tenant: str,
    idempotency_key: str | None,
    wait_s: float,
    trace: tracing.JobTrace | None = None,
) -> Response:
    """``Prefer: wait=S``: submit, then wait (holding no submit slot or key lock) up to S seconds for the
    job to finish: 200 with its status body if it did, else the usual 202."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    waits: JobWaits = request.app.state.waits
    job_id = parsed.job.job_id
    with waits.expect(tenant, job_id) as ticket:  # before the send: the job may finish at once
        accepted = await _submit_job(parsed, request, tenant, idempotency_key, trace)
        if ticket is None:
            return accepted
        if parsed.reusable is not None and (answered := orjson.loads(accepted.body)["job_id"]) != job_id:
            return await _wait_reused(request, tenant, answered, accepted, deadline, wait_s)
        if accepted.status_code == 200:  # an earlier request's job (same Idempotency-Key): maybe done long ago
            view = await load_view(request, tenant, job_id)
            if view.status.terminal:
                return _finished(request, view, wait_s)
        event = await ticket.wait(deadline - loop.time())
    if event is None:
        return accepted
    return _finished(request, await _finished_view(request, tenant, job_id, event), wait_s)


async def _wait_reused(
    request: Request, tenant: str, job_id: str, answer: Response, deadline: float, wait_s: float
) -> Response:
    """``Prefer: wait`` on a reuse answer: a hit (200) is the finished job already; a join waits for
    the joined job (``job_id``), not for the new job that was never sent."""
    if answer.status_code != 202:
        return answer
    loop = asyncio.get_running_loop()
    waits: JobWaits = request.app.state.waits
    with waits.expect(tenant, job_id) as ticket:
        if ticket is None:
            return answer
        view = await job_view(request.app.state.store, request.app.state.recent, tenant, job_id)
        if view is not None and view.status.terminal:  # finished before the ticket was taken
            return _finished(request, view, wait_s)
        event = await ticket.wait(deadline - loop.time())
    if event is None:
        return answer
    return _finished(request, await _finished_view(request, tenant, job_id, event), wait_s)


def _same_body(fingerprint: str, parsed: _Parsed) -> None:
    if fingerprint != parsed.fingerprint and not (fingerprint and parsed.body.matches(fingerprint)):
        raise Problem(
            409,
            "Idempotency-Key reused",
            "this key was used with a different request body",
            errors=[{"field": "Idempotency-Key", "reason": "reused with a different body"}],
        )


async def _submit_once(
    parsed: _Parsed,
    request: Request,
    tenant: str,
    idempotency_key: str | None,
    trace: tracing.JobTrace | None = None,
    claim: Claim | None = None,
) -> Response:
    """Publish the parsed job (keyed: unless the key already names a job); ``claim``: the reuse index
    entry published in the same flush (remembered once acked, tracked if the outcome is unknown)."""
    job = parsed.job
    outgoing = records(job, request.app.state.job_topics, None if trace is None else trace.headers)
    entry = None
    if idempotency_key is not None:
        keys: IdempotencyKeys = request.app.state.idempotency
        seen = keys.lookup(tenant, idempotency_key)
        if seen is not None:
            _same_body(seen.fingerprint, parsed)
            return _accepted(request, seen.job_id, 200)
        pending = keys.pending(tenant, idempotency_key)
        if pending is not None:  # an earlier attempt's outcome was unknown: never produce the job twice
            _same_body(pending.entry.fingerprint, parsed)
            return await _settle_pending(request, tenant, idempotency_key, pending)
        if parsed.reusable is not None and claim is None:  # the key's rules first, then reuse
            return await _reusing(parsed, parsed.reusable, request, tenant, idempotency_key, trace)
        key_record, entry = keys.record(tenant, idempotency_key, job.job_id, parsed.fingerprint or "")
        outgoing.append(key_record)
    if claim is not None:
        outgoing.append(claim.record)
    backlog = _admit_tenant(request, tenant, 1)
    _admit(request)
    recent: RecentJobs = request.app.state.recent
    recent.add(job.queued)  # before the send: the fanout may see this job's next events before we resume
    if backlog is not None:
        backlog.hold(tenant, [job.job_id])
    try:
        await request.app.state.producer.send_many(outgoing)
    except ProduceError as exc:
        recent.discard(tenant, job.job_id)
        if backlog is not None:
            backlog.release([job.job_id])
        if idempotency_key is not None and entry is not None and exc.outcome is not None:
            request.app.state.idempotency.track(tenant, idempotency_key, entry, outgoing, exc.outcome)
        if claim is not None and exc.outcome is not None:  # the request record is outgoing[0]
            request.app.state.reuse.track(claim, exc.outcome, 0)
        raise _unavailable(request, exc, [job.job_id], keyed=idempotency_key is not None) from None
    if idempotency_key is not None and entry is not None:
        request.app.state.idempotency.remember(tenant, idempotency_key, entry)
    if claim is not None:
        request.app.state.reuse.remember(claim)
    metrics.accepted(SUBMIT_ROUTE, job.kind, tenant)
    # debug, not info: one line per job is a log line per request at thousands per second.
    logger.debug(
        "accepted job %s",
        job.job_id,
        extra={"job_id": job.job_id, "tenant": tenant, "trace_id": None if trace is None else trace.trace_id},
    )
    return _accepted(request, job.job_id, trace=trace)


def _view_loader(request: Request, tenant: str) -> Callable[[str], Awaitable[JobView | None]]:
    """How reuse learns what became of a job. Where a gateway runs in this process, the recent events
    of a job accepted here are live, so they answer without a query (a herd of joins costs no
    ClickHouse round trip each); otherwise, and for jobs accepted elsewhere, the job view."""
    state = request.app.state
    recent: RecentJobs = state.recent
    live = getattr(state, "fanout", None) is not None

    async def load(job_id: str) -> JobView | None:
        if live:
            events = recent.events(tenant, job_id)
            if events:
                return JobView.fold(events)
        return await job_view(state.store, recent, tenant, job_id)

    return load


async def _reusing(
    parsed: _Parsed,
    reusable: Reusable,
    request: Request,
    tenant: str,
    idempotency_key: str | None,
    trace: tracing.JobTrace | None = None,
) -> Response:
    """A submit with ``reuse``: answered by an identical earlier job if one fits, else a new job that
    later identical requests can reuse. One request per key at a time per process submits (single
    flight): the others wait for its job, then join it — also when its outcome was unknown, once
    it landed (``ReuseIndex.single_flight``)."""
    index: ReuseIndex = request.app.state.reuse
    load = _view_loader(request, tenant)
    found = await index.find(reusable.key, reusable.max_age_s, load)
    if found is None:
        with await _flight(request, index, reusable.key):
            found = await index.find(reusable.key, reusable.max_age_s, load)
            if found is None:
                claim = index.claim(reusable.key, parsed.job.job_id, reusable.version)
                return await _submit_once(parsed, request, tenant, idempotency_key, trace, claim)
    return await _answer_reused(request, tenant, idempotency_key, parsed, found)


async def _flight(request: Request, index: ReuseIndex, key: bytes) -> AbstractContextManager[None]:
    """``index.single_flight(key)``; 503 'outcome unknown' naming the job of an identical request whose
    delivery reports are still out after JOBSTREAM_PRODUCE_TIMEOUT_S (it may land: a retry joins it)."""
    settings: Settings = request.app.state.settings
    try:
        return await index.single_flight(key, settings.produce_timeout_s)
    except StillUnknown as exc:
        raise Problem(
            503,
            "Outcome unknown",
            f"an identical request's job {exc.job_id} was sent to Kafka but is not acknowledged after "
            f"{settings.produce_timeout_s:g}s; it may still be accepted and run, and answers this request "
            "if it does. Poll links.self, or retry: a retry joins it once it landed.",
            headers={"Retry-After": _outage_retry_after(settings)},
            outcome="unknown",
            job_id=exc.job_id,
            links=_links(request, exc.job_id),
        ) from None


async def _answer_reused(
    request: Request, tenant: str, idempotency_key: str | None, parsed: _Parsed, found: Found
) -> Response:
    """200 with the earlier job's status and result (a hit), or 202 with the job joined. Records the
    answer on jobs.reuses for analytics and, with a key, the key → that job."""
    index: ReuseIndex = request.app.state.reuse
    outgoing = [index.answer_record(tenant, found, parsed.job.kind)]
    entry = None
    if idempotency_key is not None:
        keys: IdempotencyKeys = request.app.state.idempotency
        key_record, entry = keys.record(tenant, idempotency_key, found.job_id, parsed.fingerprint or "")
        outgoing.append(key_record)
    try:
        await request.app.state.producer.send_many(outgoing)
    except ProduceError as exc:
        if idempotency_key is None:  # the answer stands; only its count in the analytics may be missing
            logger.warning("a reuse answer was not recorded: %s", exc, extra={"job_id": found.job_id})
        else:
            if entry is not None and exc.outcome is not None:
                request.app.state.idempotency.track(tenant, idempotency_key, entry, outgoing, exc.outcome)
            raise _unavailable(request, exc, [found.job_id], keyed=True) from None
    else:
        if idempotency_key is not None and entry is not None:
            request.app.state.idempotency.remember(tenant, idempotency_key, entry)
    links = _links(request, found.job_id)
    if found.hit and found.view is not None:
        body = JobOut(
            **found.view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=Links(**links)
        ).model_dump(mode="json")
        body["reused_from"] = found.job_id
        return Response(
            orjson.dumps(body), status_code=200, media_type="application/json", headers={"Location": links["self"]}
        )
    body = {"job_id": found.job_id, "status": found.status.value, "links": links, "reused_from": found.job_id}
    return Response(
        orjson.dumps(body),
        status_code=202,
        media_type="application/json",
        headers={"Location": links["self"], "Retry-After": _retry_after(request)},
    )


async def _settle_pending(request: Request, tenant: str, key: str, pending: PendingKey) -> Response:
    """A retry of a keyed submit whose outcome was unknown: wait (bounded) for the first attempt's
    delivery reports; answer with its job once they are in, re-sending only records that failed."""
    settings: Settings = request.app.state.settings
    keys: IdempotencyKeys = request.app.state.idempotency
    job_id = pending.entry.job_id
    try:
        outcome = await asyncio.wait_for(asyncio.shield(pending.outcome), settings.produce_timeout_s)
    except TimeoutError:
        raise _unavailable(
            request, ProduceError("still no acknowledgement", pending.outcome), [job_id], keyed=True
        ) from None
    if not outcome.ok:  # some records surely failed (delivery timeout): send exactly those again
        resend = [o for o, d in zip(pending.outgoing, outcome.delivered, strict=False) if d is None]
        try:
            await request.app.state.producer.send_many(resend)
        except ProduceError as exc:
            if exc.outcome is not None:
                keys.track(tenant, key, pending.entry, resend, exc.outcome)
            raise _unavailable(request, exc, [job_id], keyed=True) from None
    keys.remember(tenant, key, pending.entry)
    keys.settled(tenant, key)
    return _accepted(request, job_id, 200)


class BatchSubmission(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jobs: list[Any] = Field(min_length=1, description="Job submissions, validated one by one.")


class BatchItem(BaseModel):
    index: int
    job_id: str | None = None
    status: JobStatus | None = None
    links: Links | None = None
    error: dict[str, Any] | None = None
    reused_from: str | None = Field(
        default=None, description="With reuse: the earlier (or same-batch) job that answers this item."
    )


class BatchAccepted(BaseModel):
    accepted: int = Field(description="New jobs.")
    rejected: int
    reused: int | None = Field(default=None, description="Items answered by an earlier job (when any asked).")
    jobs: list[BatchItem]


_BatchParts = tuple[list[Prepared], list[dict[str, Any]], list[tuple[int, Prepared, Reusable]]]


def _prepare_batch(raw: bytes, tenant: str, settings: Settings, webhooks: WebhookPolicy) -> _BatchParts:
    """Body → the valid jobs' records, one item per submission, and (item index, job, reuse key) of
    the jobs that asked for reuse; raises Problem. Pure and CPU-bound."""
    body = _json_body(BatchSubmission, raw, settings.max_listed_errors)
    if len(body.jobs) > settings.batch_max_jobs:
        raise Problem(
            422,
            "Too many jobs",
            f"at most {settings.batch_max_jobs} jobs per batch",
            errors=[{"field": "jobs", "reason": f"more than {settings.batch_max_jobs} items"}],
        )
    items: list[dict[str, Any]] = []  # BatchItem's fields, every one present (null when unset)
    ready = []
    reusing: list[tuple[int, Prepared, Reusable]] = []
    for index, item in enumerate(body.jobs):
        try:
            submission = JobSubmission.model_validate(item)
            if submission.reuse is None:
                job = prepare_validated(
                    submission,
                    tenant,
                    None,
                    settings.max_listed_errors,
                    webhooks=webhooks,
                    max_start_within_s=settings.max_start_within_s,
                )[0]
            else:
                job, reusable = prepare_reusable(
                    submission,
                    tenant,
                    settings.reuse_max_age_s,
                    max_errors=settings.max_listed_errors,
                    webhooks=webhooks,
                    max_start_within_s=settings.max_start_within_s,
                )
                if reusable is not None:
                    reusing.append((index, job, reusable))
        except ValidationError as exc:
            errors, count = validation_errors(exc, ("jobs", str(index)), settings.max_listed_errors)
            items.append(
                _batch_item(index, error=_item_problem("Invalid job", "see 'errors'", errors, error_count=count))
            )
            continue
        except InvalidSubmission as exc:
            errors = [{**e, "field": f"jobs.{index}.{e['field']}"} for e in exc.errors]
            items.append(_batch_item(index, error=_item_problem(exc.title, exc.detail, errors, **exc.extensions)))
            continue
        ready.append(job)
        items.append(_batch_item(index, job.job_id, _links_from(settings, job.job_id)))
    return ready, items, reusing


async def _reuse_in_batch(
    request: Request, tenant: str, ready: list[Prepared], items: list[dict[str, Any]], reusing: list[Any]
) -> tuple[list[Prepared], list[Outgoing], list[Any]]:
    """Answer the batch's reuse items from earlier jobs (or an identical item before them in the same
    batch); returns the jobs still to publish, the records to add to the flush (index entries, reuse
    answers), and the index entries to remember once acked. The caller holds the keys' flights."""
    index: ReuseIndex = request.app.state.reuse
    load = _view_loader(request, tenant)
    answered: set[str] = set()
    extra: list[Outgoing] = []
    claims: list[Claim] = []
    first: dict[bytes, Prepared] = {}  # reuse key → the new job of this batch that has it
    for position, job, reusable in reusing:
        found = await index.find(reusable.key, reusable.max_age_s, load)
        if found is None and reusable.key in first:
            found = Found(first[reusable.key].job_id, False, None)
        if found is None:
            first[reusable.key] = job
            claim = index.claim(reusable.key, job.job_id, reusable.version)
            extra.append(claim.record)
            claims.append(claim)
            continue
        answered.add(job.job_id)
        extra.append(index.answer_record(tenant, found, job.kind))
        item = items[position]
        item.update(job_id=found.job_id, status=found.status.value, links=_links(request, found.job_id))
        item["reused_from"] = found.job_id
    return [job for job in ready if job.job_id not in answered], extra, claims


_BATCH_OPENAPI = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": BatchSubmission.model_json_schema()}}}
}


@router.post(
    "/v1/jobs:batch",
    status_code=202,
    response_model=None,
    dependencies=[Depends(_require_json)],
    openapi_extra=_BATCH_OPENAPI,
    responses={
        202: {"model": BatchAccepted, "description": "At least one job accepted"},
        422: {
            "model": BatchAccepted,
            "description": "No job valid (each item says why)",
            "content": {PROBLEM_JSON: {"schema": ProblemDetails.model_json_schema()}},
        },
        **problem_responses(429, 503),
    },
)
async def submit_batch(request: Request, tenant: str = Depends(current_tenant)) -> Response:
    """Accept many jobs in one request and one Kafka flush; each invalid job gets its own error.
    All jobs of one request share its trace (``traceparent`` in the answer)."""
    return await traced("jobstream.submit_batch", request, lambda trace: _submit_batch(request, tenant, trace))


async def _submit_batch(request: Request, tenant: str, trace: tracing.JobTrace | None) -> Response:
    # Reuse items hold their keys' single flights until the index knows the batch's jobs, like a single
    # submit does, so an identical request meanwhile joins a job rather than starting another.
    with ExitStack() as flights:
        return await _submit_batch_holding(request, tenant, trace, flights)


async def _submit_batch_holding(
    request: Request, tenant: str, trace: tracing.JobTrace | None, flights: ExitStack
) -> Response:
    settings: Settings = request.app.state.settings
    raw = await request.body()
    try:
        ready, items, reusing = await _off_loop(
            settings, len(raw), _prepare_batch, raw, tenant, settings, request.app.state.webhook_policy
        )
        valid = len(ready)
        extra: list[Outgoing] = []
        claims: list[Claim] = []
        if reusing:
            index: ReuseIndex = request.app.state.reuse
            for key in sorted({reusable.key for _, _, reusable in reusing}):  # one order: batches never wait in a cycle
                flights.enter_context(await _flight(request, index, key))
            ready, extra, claims = await _reuse_in_batch(request, tenant, ready, items, reusing)
        backlog = None
        if ready:
            backlog = _admit_tenant(request, tenant, len(ready))
        if ready or not reusing:  # answers from earlier jobs add no work: they are not held back by lag
            _admit(request)
    except Problem as exc:
        metrics.rejected(BATCH_ROUTE, None, exc.status)
        raise
    headers = {}
    if ready or extra:
        recent: RecentJobs = request.app.state.recent
        for job in ready:
            recent.add(job.queued)
        if backlog is not None:
            backlog.hold(tenant, [job.job_id for job in ready])
        try:
            with _submit_slot(request):
                try:
                    await publish(
                        request.app.state.producer,
                        request.app.state.job_topics,
                        ready,
                        extra,
                        headers=None if trace is None else trace.headers,
                    )
                except ProduceError as exc:
                    for job in ready:
                        recent.discard(tenant, job.job_id)
                    if backlog is not None:
                        backlog.release([job.job_id for job in ready])
                    if exc.outcome is not None:  # each job's request record comes first of its two
                        at = {job.job_id: 2 * i for i, job in enumerate(ready)}
                        for claim in claims:
                            request.app.state.reuse.track(claim, exc.outcome, at[claim.entry.job_id])
                    raise _unavailable(request, exc, [job.job_id for job in ready]) from None
        except Problem as exc:
            metrics.rejected(BATCH_ROUTE, None, exc.status, len(ready))
            raise
        for claim in claims:
            request.app.state.reuse.remember(claim)
        _count_batch(ready, tenant)
        headers["Retry-After"] = _retry_after(request)
        if trace is not None:
            headers["traceparent"] = trace.traceparent
    if len(items) > valid:
        metrics.rejected(BATCH_ROUTE, None, 422, len(items) - valid)
    # Serialised directly, like a single submit's answer: validating 1,000 items we built ourselves
    # against BatchAccepted cost more than producing them.
    body = {"accepted": len(ready), "rejected": len(items) - valid, "jobs": items}
    if reusing:
        body["reused"] = valid - len(ready)
    return Response(
        orjson.dumps(body), status_code=202 if valid else 422, media_type="application/json", headers=headers
    )


def _count_batch(ready: list[Prepared], tenant: str) -> None:
    kinds: dict[str, int] = {}
    for job in ready:
        kinds[job.kind] = kinds.get(job.kind, 0) + 1
    for kind, count in kinds.items():
        metrics.accepted(BATCH_ROUTE, kind, tenant, count)


def _batch_item(
    index: int, job_id: str | None = None, links: dict[str, str] | None = None, error: dict[str, Any] | None = None
) -> dict[str, Any]:
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
async def list_jobs(
    request: Request,
    tenant: str = Depends(current_tenant),
    status: JobStatus | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(default=50, ge=1),
    cursor: str | None = None,
) -> JobPage:
    """The caller's jobs, newest first; filter by status, kind and submission time."""
    settings: Settings = request.app.state.settings
    for name, value in (("since", since), ("until", until)):
        if value is not None and not 1970 <= value.year <= 2200:
            raise Problem(
                422,
                "Invalid request",
                f"{name} must be between 1970 and 2200",
                errors=[{"field": name, "reason": "out of range (1970..2200)"}],
            )
    if limit > settings.list_max_limit:
        raise Problem(
            422,
            "Invalid request",
            f"limit is at most {settings.list_max_limit}",
            errors=[{"field": "limit", "reason": f"at most {settings.list_max_limit}"}],
        )
    try:
        rows, next_cursor = await asyncio.to_thread(
            listing.list_jobs,
            request.app.state.store,
            tenant,
            status=status,
            kind=kind,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    except listing.BadCursor:
        raise Problem(
            400,
            "Bad cursor",
            "use the next_cursor of a previous page",
            errors=[{"field": "cursor", "reason": "not a cursor of this API"}],
        ) from None
    return JobPage(
        jobs=[JobSummary(**row, links=links_for(request, row["job_id"])) for row in rows], next_cursor=next_cursor
    )


async def load_view(request: Request, tenant: str, job_id: str) -> JobView:
    """The job's state from the store, or from the recent-accepts cache if the sink lags; else 404."""
    view = await job_view(request.app.state.store, request.app.state.recent, tenant, job_id)
    if view is None:
        raise Problem(404, "Job not found", f"no job {job_id!r}")
    return view


_WAIT_QUERY = Query(
    default=None,
    description="Long-poll: answer as soon as the job is finished, or after this many seconds with its "
    "current state (at most JOBSTREAM_MAX_WAIT_S; `Prefer: wait=S` does the same).",
    examples=["10"],
)


def _wait_of(request: Request, wait: str | None) -> tuple[float | None, bool]:
    """Seconds to wait from ``?wait=`` or else ``Prefer: wait=``, and whether the header asked it."""
    settings: Settings = request.app.state.settings
    if wait is not None:
        return wait_seconds(wait, "wait", settings.max_wait_s), False
    prefer = request.headers.getlist("prefer")
    wait_s = parse_prefer(prefer, settings.max_wait_s).wait_s if prefer else None
    return wait_s, wait_s is not None


async def _waited_view(request: Request, tenant: str, job_id: str, wait_s: float | None) -> JobView:
    """The job's state, once finished or after ``wait_s`` seconds (404 at once for an unknown job)."""
    if not wait_s:
        return await load_view(request, tenant, job_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    waits: JobWaits = request.app.state.waits
    with waits.expect(tenant, job_id) as ticket:  # before reading: an event in between is not missed
        view = await load_view(request, tenant, job_id)
        if view.status.terminal or ticket is None:
            return view
        event = await ticket.wait(deadline - loop.time())
    if event is None:
        return await load_view(request, tenant, job_id)
    return await _finished_view(request, tenant, job_id, event)


async def _finished_view(request: Request, tenant: str, job_id: str, event: JobEvent) -> JobView:
    """The job after its terminal event: from memory when this process accepted it (every event since
    its ``queued`` passed through here), else from the store as well."""
    recent: RecentJobs = request.app.state.recent
    known = recent.events(tenant, job_id)
    if known and known[0].type is EventType.QUEUED:
        folded = JobView.fold([*known, event])
        if folded is not None and folded.status.terminal:
            return folded
    view = await job_view(request.app.state.store, recent, tenant, job_id, finished=event)
    assert view is not None  # finish() always gives one
    return view


def _job_out(request: Request, view: JobView) -> JobOut:
    return JobOut(**view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=links_for(request, view.job_id))


def _finished(request: Request, view: JobView, wait_s: float) -> Response:
    """``POST /v1/jobs`` with ``Prefer: wait``: the job finished in time, here it is (200)."""
    out = _job_out(request, view)
    return Response(
        out.model_dump_json(),
        status_code=200,
        media_type="application/json",
        headers={"Preference-Applied": f"wait={wait_s:g}", "Content-Location": out.links.self},
    )


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses=problem_responses(404, 400, s400="Bad `wait` (or `Prefer: wait=`)"),
)
async def status(
    job_id: str,
    request: Request,
    response: Response,
    tenant: str = Depends(current_tenant),
    wait: str | None = _WAIT_QUERY,
) -> JobOut:
    wait_s, preferred = _wait_of(request, wait)
    view = await _waited_view(request, tenant, job_id, wait_s)
    if not view.status.terminal:
        response.headers["Retry-After"] = _retry_after(request)
    if preferred:
        response.headers["Preference-Applied"] = f"wait={wait_s:g}"
    out = _job_out(request, view)
    admission: Admission | None = getattr(request.app.state, "admission", None)
    if view.status is JobStatus.QUEUED and admission is not None and admission.backlog is not None:
        place = admission.backlog.place(job_id)
        if place is not None:
            out.queue_position, out.start_eta_s = place.ahead, place.eta_s
    return out


@router.get(
    "/v1/jobs/{job_id}/result",
    responses={
        200: {"description": "The result", "content": {"application/json": {"schema": {"type": "object"}}}},
        202: {"description": "Not finished yet: poll Location after Retry-After"},
        **problem_responses(404, 409, 400, s409="The job failed or was cancelled", s400="Bad `wait`"),
    },
)
async def result(
    job_id: str, request: Request, tenant: str = Depends(current_tenant), wait: str | None = _WAIT_QUERY
) -> Any:
    wait_s, _ = _wait_of(request, wait)
    view = await _waited_view(request, tenant, job_id, wait_s)
    if view.status is JobStatus.SUCCEEDED:
        return {"job_id": job_id, "calc_version": view.calc_version, "result": view.result}
    if view.status.terminal:
        raise Problem(409, f"Job {view.status.value}", "there is no result", error=view.error)
    links = links_for(request, job_id)
    return Response(status_code=202, headers={"Location": links.self, "Retry-After": _retry_after(request)})


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 503, s409="The job already finished"),
)
async def cancel(job_id: str, request: Request, response: Response, tenant: str = Depends(current_tenant)) -> JobOut:
    """Ask the processors to cancel the job: a queued job never starts, a running one stops at its next
    progress point. The job ends ``cancelled`` (watch its events or poll its status)."""
    view = await load_view(request, tenant, job_id)
    if view.status.terminal:
        raise Problem(
            409, f"Job already {view.status.value}", "a finished job cannot be cancelled", status_now=view.status.value
        )
    try:
        await request.app.state.producer.send_many([cancel_record(request.app.state.settings, job_id, tenant)])
    except ProduceError as exc:
        logger.warning("Kafka did not acknowledge a cancel: %s", exc, extra={"job_id": job_id})
        unknown = exc.outcome is not None
        raise Problem(
            503,
            "Outcome unknown" if unknown else "Kafka unavailable",
            "the cancel may still be recorded; cancelling again is safe"
            if unknown
            else "the cancel was not recorded; retry later",
            headers={"Retry-After": _outage_retry_after(request.app.state.settings)},
            outcome="unknown" if unknown else "not_accepted",
        ) from None
    links = links_for(request, job_id)
    response.headers["Location"] = links.self
    response.headers["Retry-After"] = _retry_after(request)
    return JobOut(**view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=links)


router.add_api_route(
    "/v1/jobs/{job_id}:cancel",
    cancel,
    methods=["POST"],
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(404, 409, 503, s409="The job already finished"),
    summary="Cancel (for clients that cannot send DELETE)",
)


@router.get("/v1/kinds")
async def kinds() -> list[dict[str, Any]]:
    return [
        {
            "kind": c.kind,
            "version": c.version,
            "versions": registry.versions(c.kind),
            "description": c.description,
            "deterministic": c.deterministic,
            "params": c.params.model_json_schema(),
        }
        for c in registry.kinds()
    ]
