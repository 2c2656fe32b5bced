"""The gateway's HTTP surface: the two event streams, over SSE and WebSocket, and stream tokens.

``GET /v1/jobs/{id}/events`` (``job_stream``; ``204`` once Last-Event-ID is at the terminal
event), ``GET /v1/events`` (``tenant_stream``), their WebSocket twins ``GET /v1/jobs/{id}/ws``
and ``GET /v1/ws`` (``websocket``), and ``POST /v1/stream-tokens`` (``tokens``). Streams take
the API key or a stream token, and ``Last-Event-ID`` as a header or ``?last_event_id=``; both
transports open a stream with the same checks, so a refused WebSocket upgrade is the same HTTP
problem an SSE request gets.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, WebSocket
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import QueryParams
from starlette.requests import HTTPConnection

from edge.auth import bearer, current_tenant, tenant_of
from edge.problems import Problem
from sse_gateway import positions
from sse_gateway import websocket as websocket_mod
from sse_gateway.client_stream import ClientStream, StreamConfig
from sse_gateway.fanout import Fanout
from sse_gateway.formats import Format, P, SseFormat, WebSocketFormat
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
    app.state.sse_format = SseFormat(settings.sse_retry_ms)
    app.state.ws_format = WebSocketFormat()
    websocket_mod.quiet_denials()
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
    return _grant(request, token)


def _grant(conn: HTTPConnection, token: str | None) -> StreamGrant:
    if token is None or bearer(conn) is not None:
        return StreamGrant(tenant=tenant_of(conn))
    tokens: StreamTokens = conn.app.state.stream_tokens
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


def _admit(conn: HTTPConnection, tenant: str) -> Slot:
    limits: ConnectionLimits = conn.app.state.sse_limits
    settings: Settings = conn.app.state.settings
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


def _last_event_id(conn: HTTPConnection, query: str | None) -> str | None:
    raw = conn.headers.get("last-event-id")
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
    try:
        stream, slot = await _open_job_stream(request, grant, job_id, last_event_id, request.app.state.sse_format)
    except ClientHasEverything:
        return Response(status_code=204)
    return _respond(request, stream, slot, "job")


async def _open_job_stream(
    conn: HTTPConnection, grant: StreamGrant, job_id: str, last_event_id: str | None, fmt: Format[P]
) -> tuple[JobStream[P], Slot]:
    """Check and open one job's stream (Problem, or ClientHasEverything); the caller owns the slot."""
    if grant.job_id is not None and grant.job_id != job_id:
        raise Problem(403, "Token not valid for this job", "this stream token is scoped to another job")
    raw = _last_event_id(conn, last_event_id)
    try:
        last = int(raw) if raw is not None else -1
    except ValueError:
        raise Problem(
            400,
            "Invalid Last-Event-ID",
            f"expected a seq of this job (an integer), got {str(raw)[:100]!r}",
            errors=[{"field": "last_event_id", "reason": "not an integer"}],
        ) from None
    if last < -1:
        raise Problem(
            400,
            "Invalid Last-Event-ID",
            "must be >= 0",
            errors=[{"field": "last_event_id", "reason": "out of range"}],
        )
    slot = _admit(conn, grant.tenant)
    config: StreamConfig = conn.app.state.stream_config
    stream = JobStream(conn.app.state.fanout, conn.app.state.store, config, grant.tenant, fmt, job_id, last)
    if raw is not None:
        metrics.SSE_RESUMES.labels("job").inc()
    try:
        await stream.open()
    except BaseException:
        slot.release()
        raise
    return stream, slot


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
    stream, slot = _open_tenant_stream(
        request, grant, kind, status, job_id, last_event_id, request.app.state.sse_format
    )
    return _respond(request, stream, slot, "tenant")


def _open_tenant_stream(
    conn: HTTPConnection,
    grant: StreamGrant,
    kind: list[str],
    status: list[str],
    job_id: list[str],
    last_event_id: str | None,
    fmt: Format[P],
) -> tuple[TenantStream[P], Slot]:
    """Check and open the tenant's stream (or Problem); the caller owns the slot."""
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
    fanout: Fanout = conn.app.state.fanout
    raw = _last_event_id(conn, last_event_id)
    try:
        resume = positions.parse(raw, fanout.partitions) if raw is not None else None
    except positions.BadPosition as exc:
        raise Problem(
            400,
            "Invalid Last-Event-ID",
            f"expected an id of this stream: {exc}",
            errors=[{"field": "last_event_id", "reason": str(exc)}],
        ) from None
    accepts = EventFilter(_values(kind, "kind"), statuses, _values(job_id, "job_id"))
    slot = _admit(conn, grant.tenant)
    config: StreamConfig = conn.app.state.stream_config
    stream = TenantStream(fanout, conn.app.state.store, config, grant.tenant, fmt, accepts, resume)
    if resume is not None:
        metrics.SSE_RESUMES.labels("tenant").inc()
    stream.open()
    return stream, slot


def _respond(request: Request, stream: ClientStream[bytes], slot: Slot, endpoint: str) -> EventStreamResponse:
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


@router.websocket("/v1/jobs/{job_id}/ws")
async def job_socket(websocket: WebSocket, job_id: str) -> None:
    """One job's events as WebSocket messages, like ``GET /v1/jobs/{id}/events``; closes 1000 after the
    terminal event. Refusals (401/403/404/400/429/503) are HTTP answers to the upgrade."""
    query = websocket.query_params
    try:
        grant = _grant(websocket, _one(query, "token"))
        stream, slot = await _open_job_stream(
            websocket, grant, job_id, _one(query, "last_event_id"), websocket.app.state.ws_format
        )
    except ClientHasEverything:
        await websocket_mod.finished(websocket)
        return
    except Problem as problem:
        await websocket_mod.refuse(websocket, problem)
        return
    await websocket_mod.WebSocketSession(websocket, stream, slot, websocket.app.state.sse_watchdog).run()


@router.websocket("/v1/ws")
async def tenant_socket(websocket: WebSocket) -> None:
    """Every event of the caller's jobs as WebSocket messages, with the filters of ``GET /v1/events``."""
    query = websocket.query_params
    try:
        grant = _grant(websocket, _one(query, "token"))
        stream, slot = _open_tenant_stream(
            websocket,
            grant,
            query.getlist("kind"),
            query.getlist("status"),
            query.getlist("job_id"),
            _one(query, "last_event_id"),
            websocket.app.state.ws_format,
        )
    except Problem as problem:
        await websocket_mod.refuse(websocket, problem)
        return
    await websocket_mod.WebSocketSession(websocket, stream, slot, websocket.app.state.sse_watchdog).run()


def _one(query: QueryParams, name: str) -> str | None:
    """A parameter given at most once (the last one wins, as FastAPI's ``Query`` does for SSE)."""
    values = query.getlist(name)
    return values[-1] if values else None


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
