"""``GET /v1/jobs/{id}/events``: a job's events as Server-Sent Events, history then live.

Gap-free seam: subscribe to the live tail first, then read history from the
store, then emit strictly in ``seq`` order, holding back any live event that
arrives ahead of a missing one until history (re-read while waiting) fills the
gap. ``id:`` is the event's seq, so ``Last-Event-ID`` resumes exactly after it
(sse-starlette leaves Last-Event-ID to us). The stream ends after the terminal
event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

import orjson
from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from ingest_api.problems import Problem
from ingest_api.auth import current_tenant
from ingest_api.routes import load_view
from sink.store import ClickHouseStore
from sse_gateway.fanout import Fanout, Subscription
from streams.events import JobEvent
from streams.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter()

MAX_HISTORY_POLL_S = 10.0


def parse_last_event_id(header: str | None, query: str | None) -> int:
    raw = header if header is not None else query
    if raw is None or raw == "":
        return -1
    try:
        value = int(raw)
    except ValueError:
        raise Problem(400, "Invalid Last-Event-ID", f"expected a job event id (an integer), got {raw!r}") from None
    if value < -1:
        raise Problem(400, "Invalid Last-Event-ID", "must be >= 0")
    return value


def to_sse(event: JobEvent, retry_ms: int) -> ServerSentEvent:
    return ServerSentEvent(
        data=orjson.dumps(event.model_dump(mode="json")).decode(), event=event.type.value, id=str(event.seq),
        retry=retry_ms,
    )


class _Ordered:
    """Reorder buffer: releases events strictly in seq order after ``last``."""

    def __init__(self, last: int) -> None:
        self.last = last
        self._held: dict[int, JobEvent] = {}

    def add(self, events: list[JobEvent]) -> list[JobEvent]:
        for event in events:
            if event.seq > self.last:
                self._held.setdefault(event.seq, event)
        ready = []
        while self.last + 1 in self._held:
            self.last += 1
            ready.append(self._held.pop(self.last))
        return ready

    @property
    def waiting(self) -> bool:
        return bool(self._held)


async def job_stream(store: ClickHouseStore, sub: Subscription, tenant: str, job_id: str, last: int,
                     settings: Settings, request: Request) -> AsyncIterator[ServerSentEvent]:
    order = _Ordered(last)
    poll_s = settings.sse_history_poll_s
    joined = False  # once history and live meet, live alone is complete
    deadline = asyncio.get_running_loop().time() + settings.sse_max_stream_s
    for event in order.add(await store.ajob_events(tenant, job_id, after_seq=last)):
        yield to_sse(event, settings.sse_retry_ms)
        if event.terminal:
            return
    while asyncio.get_running_loop().time() < deadline:
        if sub.overflowed:
            logger.info("dropping slow SSE client", extra={"job_id": job_id})
            return
        try:
            live = [await asyncio.wait_for(sub.queue.get(), timeout=poll_s)]
            while not sub.queue.empty():
                live.append(sub.queue.get_nowait())
            if any(e.seq <= order.last + 1 for e in live):
                joined = True
        except asyncio.TimeoutError:
            live = []
        if not live or order.waiting or not joined:
            live += await store.ajob_events(tenant, job_id, after_seq=order.last)
            poll_s = min(poll_s * 2, MAX_HISTORY_POLL_S) if not live else settings.sse_history_poll_s
        for event in order.add(live):
            yield to_sse(event, settings.sse_retry_ms)
            if event.terminal:
                return
        if await request.is_disconnected():
            return


@router.get("/v1/jobs/{job_id}/events", responses={
    200: {"content": {"text/event-stream": {}}, "description": "The job's events as Server-Sent Events"},
    404: {"description": "No such job"},
})
async def job_events(job_id: str, request: Request, tenant: str = Depends(current_tenant),
                     last_event_id: str | None = Query(default=None)) -> EventSourceResponse:
    settings: Settings = request.app.state.settings
    last = parse_last_event_id(request.headers.get("last-event-id"), last_event_id)
    fanout: Fanout = request.app.state.fanout
    sub = fanout.subscribe(job_id)
    try:
        await load_view(request, tenant, job_id)  # 404 for a job we do not know
    except Problem:
        fanout.unsubscribe(sub)
        raise

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            async for item in job_stream(request.app.state.store, sub, tenant, job_id, last, settings, request):
                yield item
        finally:
            fanout.unsubscribe(sub)

    return EventSourceResponse(
        events(), ping=int(settings.sse_heartbeat_s), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        send_timeout=30,
    )
