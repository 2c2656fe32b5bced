"""WebSocket streams: the gateway's per-job and multi-job streams as WebSocket text messages.

What a client is sent is decided by the same ``JobStream`` / ``TenantStream`` as SSE, with
``formats.WebSocketFormat``: same history-then-live seam, ids, resets, limits and slow-client
rule. What differs is the transport:

- The upgrade is answered only once the stream is open (credentials, parameters, the job's
  existence, connection limits): a refusal is the HTTP problem+json an SSE request gets, sent
  with the ASGI WebSocket Denial Response extension (``refuse``), never an opened socket.
- Heartbeats are protocol pings from uvicorn (``ws_ping_interval``; ``jobstream serve`` sets it
  from JOBSTREAM_SSE_HEARTBEAT_S); the multi-job stream also sends its position when idle.
- Why a socket ended is its close code (``CloseCode``) and reason (a ``CloseReason`` word).
- A client that stops reading is dropped by the same send watchdog as SSE
  (JOBSTREAM_SSE_SEND_TIMEOUT_S), or when its queue overflows (JOBSTREAM_SSE_QUEUE_SIZE).
"""

from __future__ import annotations

import asyncio
import logging
from enum import IntEnum

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from edge.problems import Problem, problem_response
from sse_gateway.client_stream import ClientStream
from sse_gateway.limits import Slot
from sse_gateway.reasons import CloseReason
from sse_gateway.sse import SendWatchdog

logger = logging.getLogger(__name__)

DENIAL_EXTENSION = "websocket.http.response"
FINISHED = "finished"  #: the close reason after a job's terminal event


class CloseCode(IntEnum):
    """Why the gateway closed a socket; every code but 1000 means: reconnect with ``?last_event_id=``."""

    NORMAL = 1000  #: the job's terminal event was sent (or the client had it already): nothing more will come
    GOING_AWAY = 1001  #: the gateway is shutting down
    SLOW_CLIENT = 4000  #: the client fell more than JOBSTREAM_SSE_QUEUE_SIZE events behind
    MAX_LIFETIME = 4001  #: the socket outlived JOBSTREAM_SSE_MAX_STREAM_S


_CODES = {
    CloseReason.SLOW_CLIENT: CloseCode.SLOW_CLIENT,
    CloseReason.MAX_LIFETIME: CloseCode.MAX_LIFETIME,
    CloseReason.SHUTDOWN: CloseCode.GOING_AWAY,
}


class DenialLogFilter(logging.Filter):
    """Drops uvicorn's "returned without completing handshake" error, which its websockets-sansio
    protocol logs after every denial response although the client got it (Kludex/uvicorn#3138,
    open). Our socket routes always accept, close or deny, so the line is never a real fault here."""

    MESSAGE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != self.MESSAGE


def quiet_denials() -> None:
    """Install ``DenialLogFilter`` on uvicorn's error logger (once per process)."""
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DenialLogFilter) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(DenialLogFilter())


async def refuse(websocket: WebSocket, problem: Problem) -> None:
    """Answer the upgrade with the problem's HTTP response: no socket opens."""
    response = problem_response(problem.status, problem.title, problem.detail, problem.headers, **problem.extensions)
    if DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:  # a server without the extension: the handshake fails with its 403
        await websocket.close(code=1008)


async def finished(websocket: WebSocket) -> None:
    """The client has every event of the job already: open and close at once (code 1000)."""
    await websocket.accept()
    await websocket.close(CloseCode.NORMAL, FINISHED)


class WebSocketSession:
    """Sends a stream's chunks, one text message per piece, until the stream ends (then closes with a
    ``CloseCode``), the client leaves, or the client stops reading; releases ``slot`` on every exit."""

    def __init__(self, websocket: WebSocket, stream: ClientStream[str], slot: Slot, watchdog: SendWatchdog) -> None:
        self.websocket = websocket
        self.stream = stream
        self.slot = slot
        self.watchdog = watchdog
        self.gone = False
        self.timed_out = False
        self._task: asyncio.Task[None] | None = None

    def expire(self) -> None:
        """The client did not take a message for the send timeout: drop it (no close frame can pass)."""
        self.timed_out = True
        self.gone = True
        logger.info("WebSocket client did not read for %.0f s; dropping it", self.watchdog.timeout_s)
        self.stream.close()
        if self._task is not None:
            self._task.cancel()

    async def run(self) -> None:
        self._task = asyncio.current_task()
        frames = self.stream.frames()
        watcher: asyncio.Task[None] | None = None
        try:
            await self.websocket.accept()
            watcher = asyncio.create_task(self._watch())
            async for chunk in frames:
                if self.gone:
                    break
                if chunk:
                    await self._send_all(chunk)
            if not self.gone:
                reason = self.stream.reason
                code = _CODES.get(reason, CloseCode.NORMAL) if reason is not None else CloseCode.NORMAL
                self.watchdog.begin(self)
                try:
                    await self.websocket.close(code, reason or FINISHED)
                finally:
                    self.watchdog.end(self)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if not self.timed_out and not self.gone:  # the server is stopping: say so, briefly
                try:
                    async with asyncio.timeout(1):
                        await self.websocket.close(CloseCode.GOING_AWAY, CloseReason.SHUTDOWN)
                except (TimeoutError, OSError, RuntimeError, WebSocketDisconnect):
                    pass
        except WebSocketDisconnect:
            pass  # the client went away while we sent
        finally:
            if watcher is not None:
                watcher.cancel()
            try:
                await frames.aclose()  # type: ignore[attr-defined]  # an async generator; typed as AsyncIterator
            finally:
                self.stream.close()
                self.slot.release()

    async def _send_all(self, chunk: list[str]) -> None:
        self.watchdog.begin(self)
        try:
            for message in chunk:
                if self.gone:
                    return
                await self.websocket.send({"type": "websocket.send", "text": message})
        finally:
            self.watchdog.end(self)

    async def _watch(self) -> None:
        """Read (and ignore) what the client sends until it disconnects."""
        while self.websocket.client_state != WebSocketState.DISCONNECTED:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                self.gone = True
                self.stream.close()
                return
