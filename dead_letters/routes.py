"""HTTP face of dead letters: ``GET /v1/dead-letters`` and ``POST /v1/dead-letters/{id}:redrive``.

A tenant sees its own dead letters only; another tenant's is a 404, like one that does not exist.
A request that could not be read may not name its tenant: such dead letters (and every tenant's)
are seen only by the operators of ``JOBSTREAM_DEAD_LETTER_TENANTS`` (everyone without API keys,
which binds loopback only). A re-drive submits the dead-lettered request again as a new job,
with fixed ``params`` if given, owned by the dead letter's tenant (the caller's when it has none).
It is recorded on the dead-letter topic with the new job (``book.py``): the list marks re-driven
letters (``?redriven=`` filters), and an ``Idempotency-Key`` works as on ``POST /v1/jobs``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
from datetime import datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calculations import registry
from dead_letters.book import BadCursor, DeadLetter, DeadLetterBook, RecordGone, parse_id
from edge.auth import KeyRing, current_tenant
from edge.idempotency_key import OPENAPI_SCHEMA, idempotency_key_of
from edge.problems import Problem, problem_responses, validation_errors
from store.recent import RecentJobs
from streams import dead_letters as fmt
from streams.events import JobStatus, new_job_id
from streams.producer import Outcome, Outgoing, ProduceError
from streams.settings import Settings
from streams.wire import Prepared, build, decode_request, records

logger = logging.getLogger(__name__)

router = APIRouter(tags=["dead letters"], responses=problem_responses(400, 401, 422))

# An Idempotency-Key as POST /v1/jobs takes it: 1 to 255 visible ASCII characters, no spaces.
_REDRIVE_IDS = uuid.UUID("5d0c1d7e-2b8a-4c3e-9a51-7f3a0e6b2c44")  # namespace of keyed re-drives' job ids


class SourceOut(BaseModel):
    partition: int = Field(description="Partition of jobs.requested the request was read from.")
    offset: int = Field(description="Its offset there.")


class RedriveOut(BaseModel):
    job_id: str = Field(description="The latest job it was re-driven as.")
    job_ids: list[str] = Field(description="Every job it was re-driven as, oldest first.")
    redriven_at: datetime = Field(description="When it was last re-driven.")


class DeadLetterOut(BaseModel):
    id: str = Field(description="The dead letter's id: <partition>-<offset> in jobs.dead-letters.")
    job_id: str | None = Field(description="The job, when its id could be read.")
    tenant: str | None = Field(description="The job's tenant, when it could be read.")
    kind: str | None = Field(description="The calculation, when it could be read.")
    reason: str = Field(description="undecodable or crashed.")
    error: str
    source: SourceOut | None
    created_at: datetime
    redriven: RedriveOut | None = Field(description="Whether and as what it was re-driven; null if never.")
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


def _out(settings: Settings, book: DeadLetterBook, entry: DeadLetter) -> DeadLetterOut:
    links = {"redrive": f"{_base(settings)}/v1/dead-letters/{entry.id}:redrive"}
    if entry.job_id is not None:
        links["job"] = f"{_base(settings)}/v1/jobs/{entry.job_id}"
    mark = book.redrive_of(entry.id)
    redriven = None
    if mark is not None:
        redriven = RedriveOut(job_id=mark.job_ids[-1], job_ids=list(mark.job_ids), redriven_at=mark.at)
        links["redriven_job"] = f"{_base(settings)}/v1/jobs/{mark.job_ids[-1]}"
    return DeadLetterOut(
        id=entry.id,
        job_id=entry.job_id,
        tenant=entry.tenant,
        kind=entry.kind,
        reason=entry.reason,
        error=entry.error,
        source=SourceOut(**entry.source) if entry.source else None,
        created_at=entry.created_at,
        redriven=redriven,
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
    redriven: bool | None = Query(
        default=None, description="true: only re-driven ones; false: only those never re-driven; default: all."
    ),
) -> DeadLetterPage:
    """The caller's dead letters (an operator's: everyone's), newest first, each marked if re-driven."""
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
        entries, next_cursor = book.page_for(tenant, _keys_enabled(request), limit, cursor, redriven)
    except BadCursor:
        raise Problem(
            400,
            "Bad cursor",
            "use the next_cursor of a previous page",
            errors=[{"field": "cursor", "reason": "not a cursor of this API"}],
        ) from None
    return DeadLetterPage(dead_letters=[_out(settings, book, e) for e in entries], next_cursor=next_cursor)


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
    entry: DeadLetter,
    record: dict[str, Any],
    fixed: dict[str, Any] | None,
    tenant: str,
    max_errors: int,
    job_id: str | None = None,
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
        return build(job_id or new_job_id(), tenant, kind, params, fields.get("priority", 0), fields.get("timeout_s"))
    except TypeError as exc:
        raise Problem(422, "Invalid params", str(exc), errors=[{"field": "params", "reason": str(exc)}]) from None


def _fingerprint(dead_letter_id: str, body: Redrive) -> str:
    """What a keyed re-drive asked for (the letter and its fixed params), to tell a retry from another request."""
    content = {"dead_letter_id": dead_letter_id, "params": body.params}
    try:
        canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer past 64 bits: refused later as invalid params anyway
        canonical = repr(content).encode()
    return hashlib.sha256(canonical).hexdigest()


def _answer(settings: Settings, job_id: str, dead_letter_id: str, status_code: int) -> Response:
    path = f"{_base(settings)}/v1/jobs/{job_id}"
    links = {"self": path, "events": f"{path}/events", "result": f"{path}/result"}
    body_out = {"job_id": job_id, "status": JobStatus.QUEUED.value, "redrive_of": dead_letter_id, "links": links}
    return Response(
        orjson.dumps(body_out),
        status_code=status_code,
        media_type="application/json",
        headers={"Location": path, "Retry-After": str(settings.retry_after_s)},
    )


@router.post(
    "/v1/dead-letters/{dead_letter_id}:redrive",
    status_code=202,
    response_model=Redriven,
    openapi_extra={
        "requestBody": {"required": False, "content": {"application/json": {"schema": Redrive.model_json_schema()}}},
        "parameters": [
            {
                "in": "header",
                "name": "idempotency-key",
                "required": False,
                "description": "As on POST /v1/jobs: a retry with the same key, letter and body answers 200 with "
                "the same job and makes no second one; the key with another letter or body is 409.",
                "schema": OPENAPI_SCHEMA,
            }
        ],
    },
    responses={
        200: {"description": "An earlier re-drive with this Idempotency-Key: its job", "model": Redriven},
        **problem_responses(
            404,
            409,
            410,
            413,
            415,
            503,
            s404="No such dead letter (or another tenant's)",
            s409="The dead letter names no registered calculation, or the Idempotency-Key names another re-drive",
            s410="The dead letter's record is no longer in Kafka (retention)",
        ),
    },
)
async def redrive(dead_letter_id: str, request: Request, tenant: str = Depends(current_tenant)) -> Response:
    """Submit the dead-lettered request again as a new job (with fixed ``params`` if given): 202 + Location.
    With an ``Idempotency-Key``, a retry with the same letter and body answers 200 with the same job."""
    settings: Settings = request.app.state.settings
    book: DeadLetterBook = request.app.state.dead_letters
    key = idempotency_key_of(request)
    entry = book.get(dead_letter_id) if parse_id(dead_letter_id) is not None else None
    if entry is None or not book.visible(entry, tenant, _keys_enabled(request)):
        raise _not_found(dead_letter_id)
    body = _body(request, await request.body())
    if key is None:
        return await _redrive(request, book, entry, body, tenant, None, None)
    fingerprint = _fingerprint(entry.id, body)
    async with book.exclusive(tenant, key):
        seen = book.lookup(tenant, key)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise Problem(
                    409,
                    "Idempotency-Key reused",
                    "this Idempotency-Key was used for another re-drive (another dead letter or other params)",
                    errors=[{"field": "Idempotency-Key", "reason": "reused with a different request"}],
                )
            return _answer(settings, seen.job_id, seen.dead_letter_id, 200)
        return await _redrive(request, book, entry, body, tenant, key, fingerprint)


async def _redrive(
    request: Request,
    book: DeadLetterBook,
    entry: DeadLetter,
    body: Redrive,
    tenant: str,
    key: str | None,
    fingerprint: str | None,
) -> Response:
    settings: Settings = request.app.state.settings
    dead_letter_id = entry.id
    try:
        record = await asyncio.to_thread(book.record, entry)
    except RecordGone:
        raise Problem(410, "Dead letter gone", f"the record of {dead_letter_id!r} is no longer in Kafka") from None
    except (TimeoutError, ValueError) as exc:
        logger.warning("could not read dead letter %s: %s", dead_letter_id, exc)
        raise Problem(503, "Kafka unavailable", "could not read the dead letter; retry later") from None
    owner = entry.tenant if entry.tenant is not None else tenant
    # a keyed re-drive's job id derives from (caller, key): racing replicas name the same job
    job_id = uuid.uuid5(_REDRIVE_IDS, f"{tenant}\x00{key}").hex if key is not None else None
    job: Prepared = await asyncio.to_thread(
        _prepare, entry, record, body.params, owner, settings.max_listed_errors, job_id
    )
    mark = fmt.redrive_record(
        dead_letter_id=dead_letter_id,
        job_id=job.job_id,
        tenant=owner,
        by=tenant,
        idempotency_key=key,
        fingerprint=fingerprint,
    )
    outgoing = [*records(job, request.app.state.job_topics), Outgoing(book.topic, dead_letter_id.encode(), mark)]
    recent: RecentJobs = request.app.state.recent
    recent.add(job.queued)
    try:
        await request.app.state.producer.send_many(outgoing)
    except ProduceError as exc:
        recent.discard(owner, job.job_id)
        unknown = exc.outcome is not None
        if unknown and exc.outcome is not None and key is not None:
            _settle_later(book, fmt.load_redrive(mark), exc.outcome)  # a retry with the key answers with this job
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
    book.apply_redrive(fmt.load_redrive(mark))  # the list shows it at once, before the record is read back
    logger.info("re-drove dead letter %s as job %s", dead_letter_id, job.job_id, extra={"tenant": owner})
    return _answer(settings, job.job_id, dead_letter_id, 202)


def _settle_later(book: DeadLetterBook, mark: dict[str, Any], outcome: asyncio.Future[Outcome]) -> None:
    """A keyed re-drive whose outcome is unknown: hold its key now (a retry must not make a second job),
    and let go of it if Kafka did not take the records after all."""
    book.apply_redrive(mark)

    def landed(done: asyncio.Future[Outcome]) -> None:
        if done.cancelled() or not done.result().ok:
            book.forget_redrive(mark)

    outcome.add_done_callback(landed)
