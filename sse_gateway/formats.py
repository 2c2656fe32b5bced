"""How a client stream's items are written on the wire: SSE frames or WebSocket text messages.

``JobStream`` and ``TenantStream`` decide *what* a client gets (history, live, resets, ids,
heartbeats) once; a ``Format`` says how each item looks. A stream yields chunks (lists of
pieces): the SSE response writes a chunk as one body write, the WebSocket session sends each
piece as one text message. A format may have nothing to send for an item (``None``): WebSocket
heartbeats are protocol pings (uvicorn's), and its close code says why a socket ended.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import orjson

from sse_gateway import positions
from sse_gateway.entry import Entry
from sse_gateway.reasons import CloseReason

P = TypeVar("P")  # one piece: SSE bytes or a WebSocket text message


class Format(Protocol[P]):
    def job(self, entry: Entry) -> P:
        """An event of a per-job stream (id: the job's seq)."""
        ...

    def tenant(self, entry: Entry, position: list[int] | None = None) -> P:
        """An event of the multi-job stream (id: a position; default: the tail's, right after it)."""
        ...

    def control(self, event: str, data: dict[str, Any]) -> P:
        """A frame without id (``reset``): the client's last id stays where it was."""
        ...

    def position(self, position: list[int]) -> P:
        """Only an id: where a multi-job stream stands (nothing happened)."""
        ...

    def heartbeat(self, position: list[int] | None) -> P | None:
        """Keeps an idle stream open (with the multi-job stream's position)."""
        ...

    def waiting(self) -> P | None:
        """Said while a stream waits for the sink to write its history."""
        ...

    def disconnect(self, reason: CloseReason) -> P | None:
        """The last piece of a stream the gateway ends (``reason``: why)."""
        ...

    def hinted(self, piece: P) -> P:
        """The stream's first data piece, with what a client should know once (SSE's ``retry:``)."""
        ...


class SseFormat:
    """``text/event-stream`` frames; an entry's frames are built once and shared by every client."""

    def __init__(self, retry_ms: int) -> None:
        self._retry_line = b"retry: %d\n" % retry_ms

    def job(self, entry: Entry) -> bytes:
        return entry.job_frame()

    def tenant(self, entry: Entry, position: list[int] | None = None) -> bytes:
        return entry.tenant_frame(position)

    def control(self, event: str, data: dict[str, Any]) -> bytes:
        return control_frame(event, data)

    def position(self, position: list[int]) -> bytes:
        return b"id: %s\n\n" % positions.encode(position).encode()

    def heartbeat(self, position: list[int] | None) -> bytes:
        if position is None:
            return b": ping\n\n"
        return b": ping\nid: %s\n\n" % positions.encode(position).encode()

    def waiting(self) -> bytes:
        return b": waiting for history\n\n"

    def disconnect(self, reason: CloseReason) -> bytes | None:
        if reason == CloseReason.CLIENT_DISCONNECTED:
            return None
        return control_frame("disconnect", {"reason": reason, "resume": True})

    def hinted(self, piece: bytes) -> bytes:
        return self._retry_line + piece


class WebSocketFormat:
    """One JSON text message per item: ``{"id": <the SSE id>, "event": <type>, "data": <the event as on
    Kafka>}``; an id-only item is ``{"id": …, "event": "position"}``. No heartbeat messages for a
    job (uvicorn pings), no goodbye message (the close code and reason say it)."""

    def job(self, entry: Entry) -> str:
        return entry.job_message()

    def tenant(self, entry: Entry, position: list[int] | None = None) -> str:
        return entry.tenant_message(position)

    def control(self, event: str, data: dict[str, Any]) -> str:
        return orjson.dumps({"event": event, "data": data}).decode()

    def position(self, position: list[int]) -> str:
        return f'{{"id":"{positions.encode(position)}","event":"position"}}'

    def heartbeat(self, position: list[int] | None) -> str | None:
        return None if position is None else self.position(position)

    def waiting(self) -> None:
        return None

    def disconnect(self, reason: CloseReason) -> None:
        return None

    def hinted(self, piece: str) -> str:
        return piece


def control_frame(event: str, data: dict[str, Any]) -> bytes:
    """An SSE frame without ``id:`` (a client's Last-Event-ID stays where it was)."""
    return b"event: %s\ndata: %s\n\n" % (event.encode(), orjson.dumps(data))
