"""A lean ``text/event-stream`` response: one task per client plus a disconnect watcher.

Not sse-starlette: at 10,000 clients per process each connection's cost
matters, and we need our own ``Last-Event-ID``, batching of queued events into
one write, a per-write timeout (a client that stopped reading is dropped after
``JOBSTREAM_SSE_SEND_TIMEOUT_S``, watched by one timer for all clients), and a guaranteed release of the connection
slot on every exit path (normal end, disconnect, timeout, cancellation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sse_gateway.formats import control_frame
from sse_gateway.reasons import CloseReason
from telemetry import metrics

logger = logging.getLogger(__name__)

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
}


class Expiring(Protocol):
    def expire(self) -> None:
        """The client did not take a write for the send timeout: drop it."""


class SendWatchdog:
    """Drops clients whose write has not completed within ``timeout_s``, on one timer for all.

    uvicorn's ``send`` waits while the socket's buffer is full (the client stopped reading); a
    timeout around every send would cost a timer per event per client, so sends only register
    here and this task cancels those that take too long.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._sending: dict[Expiring, float] = {}
        self._task: asyncio.Task[None] | None = None

    def begin(self, response: Expiring) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._sending[response] = time.monotonic()

    def end(self, response: Expiring) -> None:
        self._sending.pop(response, None)

    async def _run(self) -> None:
        period = max(0.05, min(1.0, self.timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for response, since in list(self._sending.items()):
                if now - since > self.timeout_s:
                    self._sending.pop(response, None)
                    response.expire()


class EventStreamResponse(Response):
    """Streams the chunks of ``frames`` (each one write); ``on_disconnect`` is called when the client goes away
    (it should make ``frames`` finish), ``on_close`` exactly once when the response is over."""

    media_type = "text/event-stream"

    def __init__(
        self,
        frames: AsyncIterator[list[bytes]],
        *,
        watchdog: SendWatchdog,
        on_disconnect: Callable[[], None],
        on_close: Callable[[], None],
        endpoint: str = "job",
    ) -> None:
        self.frames = frames
        self.endpoint = endpoint
        self.watchdog = watchdog
        self.on_disconnect = on_disconnect
        self.on_close = on_close
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self.gone = False
        self.timed_out = False
        self._task: asyncio.Task | None = None

    def expire(self) -> None:
        """The client did not take a write for the send timeout: drop it."""
        self.timed_out = True
        self.gone = True
        metrics.SSE_SLOW_DROPPED.labels("send_timeout").inc()
        logger.info("SSE client did not read for %.0f s; dropping it", self.watchdog.timeout_s)
        self.on_disconnect()
        if self._task is not None:
            self._task.cancel()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        watcher: asyncio.Task[None] | None = None
        watchdog = self.watchdog
        delivered = metrics.SSE_EVENTS.labels(self.endpoint)
        unreported, reported_at = 0, time.monotonic()
        metrics.SSE_OPEN.labels(self.endpoint).inc()
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            watcher = asyncio.create_task(self._watch(receive))
            async for chunk in self.frames:
                if self.gone:
                    break
                if not chunk:
                    continue
                body = b"".join(chunk)
                watchdog.begin(self)
                try:
                    await send({"type": "http.response.body", "body": body, "more_body": True})
                finally:
                    watchdog.end(self)
                # counted per stream and added to the shared counter at most once a second (and at the
                # end): a write per chunk per client would cost more than the fan-out's own bookkeeping
                unreported += _events_in(body)
                if unreported and (now := time.monotonic()) >= reported_at + 1.0:
                    delivered.inc(unreported)
                    unreported, reported_at = 0, now
            if not self.gone:
                watchdog.begin(self)
                try:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                finally:
                    watchdog.end(self)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if not self.timed_out and not self.gone:
                # The server is shutting down (uvicorn cancels streams after its graceful timeout):
                # tell the client why and end the response cleanly.
                try:
                    async with asyncio.timeout(1):
                        body = control_frame("disconnect", {"reason": CloseReason.SHUTDOWN, "resume": True})
                    await send({"type": "http.response.body", "more_body": False, "body": body})
                except (TimeoutError, OSError, RuntimeError):
                    pass
            # timed out: return without completing; uvicorn closes the connection
        finally:
            metrics.SSE_OPEN.labels(self.endpoint).dec()
            if unreported:
                delivered.inc(unreported)
            if watcher is not None:
                watcher.cancel()
            try:
                await self.frames.aclose()  # type: ignore[attr-defined]  # an async generator; typed as AsyncIterator
            finally:
                self.on_close()

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.gone = True
                self.on_disconnect()
                return


def _events_in(chunk: bytes) -> int:
    """Events in a chunk of whole frames: lines that start with ``event:`` (a JSON ``data:`` line
    holds no raw newline, so it cannot fake one); comments and id-only frames are not events."""
    return chunk.count(b"\nevent: ") + chunk.startswith(b"event: ")
