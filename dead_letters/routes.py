"""HTTP face of dead letters: ``GET /v1/dead-letters`` and ``POST /v1/dead-letters/{id}:redrive``.

A tenant sees its own dead letters only; another tenant's is a 404, like one that does not exist.
A request that could not be read may not name its tenant: such dead letters (and every tenant's)
are seen only by the operators of ``JOBSTREAM_DEAD_LETTER_TENANTS`` (everyone without API keys,
which binds loopback only). A re-drive submits the dead-lettered request again as a new job,
with fixed ``params`` if given, owned by the dead letter's tenant (the caller's when it has none).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calculations import registry
from dead_letters.book import BadCursor, DeadLetter, DeadLetterBook, RecordGone, parse_id
from edge.auth import KeyRing, current_tenant
from edge.problems import Problem, problem_responses, validation_errors
from store.recent import RecentJobs
from streams.events import JobStatus, new_job_id
from streams.producer import ProduceError
from streams.settings import Settings
from streams.wire import Prepared, build, decode_request, records

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dead letters"], responses=problem_responses(400, 401, 422))


class SourceOut(BaseModel):
    partition: int = Field(description="Partition of jobs.requested the request was read from.")
    offset: int = Field(description="Its offset there.")


class DeadLetterOut(BaseModel):
    id: str = Field(description="The dead letter's id: <partition>-<offset> in jobs.dead-letters.")
    job_id: str | None = Field(description="The job, when its id could be read.")
    tenant: str | None = Field(description="The job's tenant, when it could be read.")
    kind: str | None = Field(description="The calculation, when it could be read.")
    reason: str = Field(description="undecodable or crashed.")
    error: str
    source: SourceOut | None
    created_at: datetime
    links: dict[str, str]


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetterOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page; null on the last page.")


class Redrive(BaseModel):
    """The optional body of a re-drive: params to use instead of the dead-lettered request's."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] | None = Field(default=None, description="Fixed params (default: the original's).")


class Redriven(BaseModel):
    job_id: str
    status: JobStatus
    redrive_of: str = Field(description="The dead letter re-driven.")
    links: dict[str, str]


def _base(settings: Settings) -> str:
    return (settings.public_url or "").rstrip("/")


def _out(settings: Settings, entry: DeadLetter) -> DeadLetterOut:
    links = {"redrive": f"{_base(settings)}/v1/dead-letters/{entry.id}:redrive"}
    if entry.job_id is not None:
        links["job"] = f"{_base(settings)}/v1/jobs/{entry.job_id}"
    return DeadLetterOut(
        id=entry.id,
        job_id=entry.job_id,
        tenant=entry.tenant,
        kind=entry.kind,
        reason=entry.reason,
        error=entry.error,
        source=SourceOut(**entry.source) if entry.source else None,
        created_at=entry.created_at,
        links=links,
    )


def _keys_enabled(request: Request) -> bool:
    keyring: KeyRing = request.app.state.keyring
    return keyring.enabled


@router.get("/v1/dead-letters", response_model=DeadLetterPage)
async def list_dead_letters(
    request: Request,
    tenant: str = Depends(current_tenant),
    limit: int = Query(default=50, ge=1),
    cursor: str | None = None,
) -> DeadLetterPage:
    """The caller's dead letters (an operator's: everyone's), newest first."""
    settings: Settings = request.app.state.settings
    if limit > settings.list_max_limit:
        raise Problem(
            422,
            "Invalid request",
            f"limit is at most {settings.list_max_limit}",
            errors=[{"field": "limit", "reason": f"at most {settings.list_max_limit}"}],
        )
    book: DeadLetterBook = request.app.state.dead_letters
    try:
        entries, next_cursor = book.page_for(tenant, _keys_enabled(request), limit, cursor)
    except BadCursor:
        raise Problem(
            400,
            "Bad cursor",
            "use the next_cursor of a previous page",
            errors=[{"field": "cursor", "reason": "not a cursor of this API"}],
        ) from None
    return DeadLetterPage(dead_letters=[_out(settings, e) for e in entries], next_cursor=next_cursor)


def _not_found(dead_letter_id: str) -> Problem:
    return Problem(
        404,
        "Dead letter not found",
        f"no dead letter {dead_letter_id[:100]!r}",
        errors=[{"field": "id", "reason": "unknown dead letter"}],
    )


def _body(request: Request, raw: bytes) -> Redrive:
    """The optional JSON body: none, or ``{"params": {...}}``; 415 / 400 / 422 naming the field."""
    if not raw.strip():
        return Redrive()
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise Problem(415, "Unsupported media type", "send the body as application/json")
    try:
        return Redrive.model_validate_json(raw)
    except ValidationError as exc:
        if exc.error_count() == 1 and exc.errors(include_url=False)[0]["type"] == "json_invalid":
            raise Problem(400, "Malformed JSON", "the request body is not valid JSON") from None
        settings: Settings = request.app.state.settings
        errors, count = validation_errors(exc, limit=settings.max_listed_errors)
        raise Problem(422, "Invalid request", "see 'errors'", errors=errors, error_count=count) from None


def _original_fields(original: bytes) -> dict[str, Any]:
    """What can be read of the dead-lettered request: kind, params, priority, timeout_s (each if valid)."""
    try:
        request = decode_request(original)
    except Exception:
        pass
    else:
        return {
            "kind": request.kind,
            "params": request.params,
            "priority": request.priority,
            "timeout_s": request.timeout_s,
        }
    try:
        data = orjson.loads(original)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    fields: dict[str, Any] = {}
    if isinstance(data.get("kind"), str):
        fields["kind"] = data["kind"]
    if isinstance(data.get("params"), dict):
        fields["params"] = data["params"]
    priority = data.get("priority")
    if type(priority) is int and 0 <= priority <= 9:
        fields["priority"] = priority
    timeout = data.get("timeout_s")
    if isinstance(timeout, int | float) and not isinstance(timeout, bool) and 0 < timeout <= 86_400:
        fields["timeout_s"] = float(timeout)
    return fields


def _prepare(
    entry: DeadLetter, record: dict[str, Any], fixed: dict[str, Any] | None, tenant: str, max_errors: int
) -> Prepared:
    """The new job's records, validated like a submission; raises Problem. CPU-bound: runs off the loop."""
    fields = _original_fields(record["original"])
    kind = fields.get("kind") or entry.kind
    if kind is None:
        raise Problem(
            409,
            "Cannot re-drive",
            "the dead-lettered request names no calculation (kind); submit a new job instead",
            errors=[{"field": "kind", "reason": "not readable in the dead-lettered request"}],
        )
    try:
        calc = registry.get(kind)
    except registry.UnknownKind:
        raise Problem(
            409,
            "Cannot re-drive",
            f"the dead-lettered request's calculation {kind!r} is not registered",
            errors=[{"field": "kind", "reason": "unknown kind"}],
        ) from None
    params = fixed if fixed is not None else fields.get("params")
    if params is None:
        raise Problem(
            422,
            "Params needed",
            "the dead-lettered request has no readable params: send fixed ones",
            errors=[{"field": "params", "reason": "required for this dead letter"}],
        )
    try:
        calc.validate(params)
    except ValidationError as exc:
        errors, count = validation_errors(exc, ("params",), max_errors)
        detail = f"params do not fit {kind!r}" + ("" if fixed is not None else " (send fixed params)")
        raise Problem(422, "Invalid params", detail, errors=errors, error_count=count) from None
    try:
        return build(new_job_id(), tenant, kind, params, fields.get("priority", 0), fields.get("timeout_s"))
    except TypeError as exc:
        raise Problem(422, "Invalid params", str(exc), errors=[{"field": "params", "reason": str(exc)}]) from None


@router.post(
    "/v1/dead-letters/{dead_letter_id}:redrive",
    status_code=202,
    response_model=Redriven,
    openapi_extra={
        "requestBody": {"required": False, "content": {"application/json": {"schema": Redrive.model_json_schema()}}}
    },
    responses=problem_responses(
        404,
        409,
        410,
        413,
        415,
        503,
        s404="No such dead letter (or another tenant's)",
        s409="The dead letter names no registered calculation",
        s410="The dead letter's record is no longer in Kafka (retention)",
    ),
)
async def redrive(dead_letter_id: str, request: Request, tenant: str = Depends(current_tenant)) -> Response:
    """Submit the dead-lettered request again as a new job (with fixed ``params`` if given): 202 + Location."""
    settings: Settings = request.app.state.settings
    book: DeadLetterBook = request.app.state.dead_letters
    entry = book.get(dead_letter_id) if parse_id(dead_letter_id) is not None else None
    if entry is None or not book.visible(entry, tenant, _keys_enabled(request)):
        raise _not_found(dead_letter_id)
    body = _body(request, await request.body())
    try:
        record = await asyncio.to_thread(book.record, entry)
    except RecordGone:
        raise Problem(410, "Dead letter gone", f"the record of {dead_letter_id!r} is no longer in Kafka") from None
    except (TimeoutError, ValueError) as exc:
        logger.warning("could not read dead letter %s: %s", dead_letter_id, exc)
        raise Problem(503, "Kafka unavailable", "could not read the dead letter; retry later") from None
    owner = entry.tenant if entry.tenant is not None else tenant
    job: Prepared = await asyncio.to_thread(_prepare, entry, record, body.params, owner, settings.max_listed_errors)
    recent: RecentJobs = request.app.state.recent
    recent.add(job.queued)
    try:
        await request.app.state.producer.send_many(records(job, request.app.state.job_topics))
    except ProduceError as exc:
        recent.discard(owner, job.job_id)
        unknown = exc.outcome is not None
        raise Problem(
            503,
            "Outcome unknown" if unknown else "Kafka unavailable",
            "the new job may still land; look for it before re-driving again"
            if unknown
            else "nothing was written; retry later",
            headers={"Retry-After": str(settings.retry_after_s)},
            outcome="unknown" if unknown else "not_accepted",
            job_id=job.job_id,
        ) from None
    logger.info("re-drove dead letter %s as job %s", dead_letter_id, job.job_id, extra={"tenant": owner})
    path = f"{_base(settings)}/v1/jobs/{job.job_id}"
    links = {"self": path, "events": f"{path}/events", "result": f"{path}/result"}
    body_out = {"job_id": job.job_id, "status": JobStatus.QUEUED.value, "redrive_of": dead_letter_id, "links": links}
    return Response(
        orjson.dumps(body_out),
        status_code=202,
        media_type="application/json",
        headers={"Location": path, "Retry-After": str(settings.retry_after_s)},
    )
