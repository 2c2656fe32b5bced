"""The gateway's HTTP surface: the two event streams and stream tokens.

``GET /v1/jobs/{id}/events`` (``job_stream``; ``204`` once Last-Event-ID is at the terminal
event), ``GET /v1/events`` (``tenant_stream``) and ``POST /v1/stream-tokens`` (``tokens``).
Streams take the API key or a stream token, and ``Last-Event-ID`` as a header or
``?last_event_id=``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from edge.auth import bearer, current_tenant, tenant_of
from edge.problems import Problem
from sse_gateway import positions
from sse_gateway.client_stream import ClientStream, StreamConfig
from sse_gateway.fanout import Fanout
from sse_gateway.job_stream import ClientHasEverything, JobStream
from sse_gateway.limits import ConnectionLimits, Slot, TooManyStreams
from sse_gateway.sse import EventStreamResponse, SendWatchdog
from sse_gateway.tenant_stream import EventFilter, TenantStream
from sse_gateway.tokens import InvalidToken, StreamGrant, StreamTokens
from streams.events import JobStatus
from streams.settings import Settings
from telemetry import metrics

logger = logging.getLogger(__name__)

router = APIRouter()

MAX_FILTER_VALUES = 1000
# The problem type of a refused stream token: the page should get a new token and reopen the stream.
INVALID_TOKEN = "urn:jobstream:problem:invalid-stream-token"
_STREAM = {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}


def install(app: FastAPI, settings: Settings) -> None:
    """Mount the gateway routes with their per-process state (token key, connection counts)."""
    app.state.stream_tokens = StreamTokens.from_settings(settings)
    app.state.stream_config = StreamConfig.from_settings(settings)
    app.state.sse_limits = ConnectionLimits(settings.sse_max_connections, settings.sse_max_connections_per_tenant)
    app.state.sse_watchdog = SendWatchdog(settings.sse_send_timeout_s)
    app.include_router(router)


def stream_grant(
    request: Request,
    token: str | None = Query(
        default=None,
        description="A stream token from POST /v1/stream-tokens (for clients that cannot send "
        "headers, such as a browser's EventSource).",
    ),
) -> StreamGrant:
    """The API key if one is sent, else the stream token. Only the stream routes use this."""
    if token is None or bearer(request) is not None:
        return StreamGrant(tenant=tenant_of(request))
    tokens: StreamTokens = request.app.state.stream_tokens
    try:
        return tokens.verify(token)
    except InvalidToken as exc:
        raise Problem(
            401,
            "Invalid stream token",
            f"the token is {exc.reason}; get a new one from POST "
            "/v1/stream-tokens and reconnect with ?last_event_id=<the last id seen>",
            headers={
                "WWW-Authenticate": f'Bearer realm="jobstream", error="invalid_token", '
                f'error_description="the stream token is {exc.reason}"'
            },
            type=INVALID_TOKEN,
            reason=exc.reason,
        ) from None


def _admit(request: Request, tenant: str) -> Slot:
    limits: ConnectionLimits = request.app.state.sse_limits
    settings: Settings = request.app.state.settings
    try:
        return limits.acquire(tenant)
    except TooManyStreams as exc:
        logger.info("refused an SSE stream: %s", exc, extra={"tenant": tenant})
        raise Problem(
            429,
            "Too many streams",
            f"this gateway's {exc.scope} limit of {exc.limit} open streams "
            "is reached; retry later or close other streams",
            headers={"Retry-After": str(settings.retry_after_s)},
            scope=exc.scope,
            limit=exc.limit,
        ) from None


def _last_event_id(request: Request, query: str | None) -> str | None:
    raw = request.headers.get("last-event-id")
    raw = raw if raw is not None else query
    return raw.strip() if raw and raw.strip() else None


def _values(raw: list[str], field: str) -> list[str]:
    values = [v.strip() for item in raw for v in item.split(",") if v.strip()]
    if len(values) > MAX_FILTER_VALUES:
        raise Problem(
            422,
            "Invalid request",
            f"at most {MAX_FILTER_VALUES} values of {field}",
            errors=[{"field": field, "reason": f"more than {MAX_FILTER_VALUES} values"}],
        )
    return values


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=Response,
    responses={
        200: _STREAM,
        204: {"description": "Last-Event-ID is the job's terminal event: nothing more will come"},
        400: {"description": "Bad Last-Event-ID"},
        401: {"description": "No or bad API key / stream token"},
        403: {"description": "The stream token is for another job"},
        404: {"description": "No such job"},
        429: {"description": "Too many open streams"},
        503: {"description": "History not readable yet; retry"},
    },
)
async def job_events(
    job_id: str,
    request: Request,
    grant: StreamGrant = Depends(stream_grant),
    last_event_id: str | None = Query(default=None, description="Same as the Last-Event-ID header."),
) -> Response:
    """One job's events: history, then live; `id:` is the event's seq; ends after the terminal event."""
    if grant.job_id is not None and grant.job_id != job_id:
        raise Problem(403, "Token not valid for this job", "this stream token is scoped to another job")
    raw = _last_event_id(request, last_event_id)
    try:
        last = int(raw) if raw is not None else -1
    except ValueError:
        raise Problem(400, "Invalid Last-Event-ID", f"expected a seq of this job (an integer), got {raw!r}") from None
    if last < -1:
        raise Problem(400, "Invalid Last-Event-ID", "must be >= 0")
    slot = _admit(request, grant.tenant)
    stream = JobStream(
        request.app.state.fanout, request.app.state.store, request.app.state.stream_config, grant.tenant, job_id, last
    )
    if raw is not None:
        metrics.SSE_RESUMES.labels("job").inc()
    try:
        await stream.open()
    except ClientHasEverything:
        slot.release()
        return Response(status_code=204)
    except BaseException:
        slot.release()
        raise
    return _respond(request, stream, slot, "job")


@router.get(
    "/v1/events",
    response_class=Response,
    responses={
        200: _STREAM,
        400: {"description": "Bad Last-Event-ID"},
        401: {"description": "No or bad API key / token"},
        403: {"description": "The stream token is for one job only"},
        429: {"description": "Too many open streams"},
    },
)
async def tenant_events(
    request: Request,
    grant: StreamGrant = Depends(stream_grant),
    kind: list[str] = Query(default=[], description="Only these kinds (repeat or comma-separate)."),
    status: list[str] = Query(
        default=[],
        description="Only events that move a job to these statuses (running covers running, progress and retrying).",
    ),
    job_id: list[str] = Query(default=[], description="Only these jobs."),
    last_event_id: str | None = Query(default=None, description="Same as the Last-Event-ID header."),
) -> Response:
    """Every event of the caller's jobs, filtered; `id:` is a position in jobs.events; never ends."""
    if grant.job_id is not None:
        raise Problem(
            403,
            "Token not valid for this stream",
            "this stream token is scoped to one job; ask for a token without job_id",
        )
    statuses = []
    for value in _values(status, "status"):
        try:
            statuses.append(JobStatus(value))
        except ValueError:
            raise Problem(
                422,
                "Invalid request",
                f"unknown status {value!r}",
                errors=[{"field": "status", "reason": f"one of {[s.value for s in JobStatus]}"}],
            ) from None
    fanout: Fanout = request.app.state.fanout
    raw = _last_event_id(request, last_event_id)
    try:
        resume = positions.parse(raw, fanout.partitions) if raw is not None else None
    except positions.BadPosition as exc:
        raise Problem(400, "Invalid Last-Event-ID", f"expected an id of this stream: {exc}") from None
    accepts = EventFilter(_values(kind, "kind"), statuses, _values(job_id, "job_id"))
    slot = _admit(request, grant.tenant)
    stream = TenantStream(
        fanout, request.app.state.store, request.app.state.stream_config, grant.tenant, accepts, resume
    )
    if resume is not None:
        metrics.SSE_RESUMES.labels("tenant").inc()
    stream.open()
    return _respond(request, stream, slot, "tenant")


def _respond(request: Request, stream: ClientStream, slot: Slot, endpoint: str) -> EventStreamResponse:
    def closed() -> None:
        stream.close()
        slot.release()

    return EventStreamResponse(
        stream.frames(),
        watchdog=request.app.state.sse_watchdog,
        on_disconnect=stream.close,
        on_close=closed,
        endpoint=endpoint,
    )


class StreamTokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: str | None = Field(
        default=None,
        max_length=256,
        description="Scope the token to this job's stream; "
        "omit for a token valid on /v1/events and every job of the tenant.",
    )
    ttl_s: float | None = Field(default=None, gt=0, description="Lifetime; at most JOBSTREAM_STREAM_TOKEN_TTL_S.")


class StreamToken(BaseModel):
    token: str
    tenant: str
    job_id: str | None
    expires_at: datetime
    expires_in_s: float
    events: str = Field(description="The stream URL with the token in place, ready for EventSource.")


@router.post(
    "/v1/stream-tokens",
    status_code=201,
    response_model=StreamToken,
    responses={
        400: {"description": "Malformed JSON"},
        401: {"description": "No or bad API key"},
        422: {"description": "Invalid request"},
    },
)
async def stream_token(
    request: Request, body: StreamTokenRequest | None = None, tenant: str = Depends(current_tenant)
) -> StreamToken:
    """A short-lived, signed token that opens the caller's streams via ?token= (needs the API key)."""
    body = body or StreamTokenRequest()
    tokens: StreamTokens = request.app.state.stream_tokens
    if body.ttl_s is not None and body.ttl_s > tokens.max_ttl_s:
        raise Problem(
            422,
            "Invalid request",
            f"ttl_s is at most {tokens.max_ttl_s:g}",
            errors=[{"field": "ttl_s", "reason": f"at most {tokens.max_ttl_s:g}"}],
        )
    token, expires_at = tokens.issue(tenant, body.job_id, body.ttl_s)
    settings: Settings = request.app.state.settings
    base = (settings.public_url or "").rstrip("/")
    path = f"/v1/jobs/{quote(body.job_id, safe='')}/events" if body.job_id else "/v1/events"
    now = datetime.now(UTC)
    return StreamToken(
        token=token,
        tenant=tenant,
        job_id=body.job_id,
        expires_at=datetime.fromtimestamp(expires_at, UTC),
        expires_in_s=max(0.0, expires_at - now.timestamp()),
        events=f"{base}{path}?token={token}",
    )
