"""One event of ``jobs.events`` as the gateway holds it: its Kafka position, the fields streams
filter on, the JSON exactly as on Kafka, and its SSE frames, built once for all clients.
"""

from __future__ import annotations

from sse_gateway import positions
from streams import wire
from streams.events import TERMINAL_EVENTS, JobEvent

_TERMINAL = frozenset(t.value for t in TERMINAL_EVENTS)


class Entry:
    """One event of ``jobs.events`` with its Kafka position and its SSE frames, built once for all clients."""

    __slots__ = (
        "partition",
        "offset",
        "timestamp_ms",
        "job_id",
        "tenant",
        "seq",
        "type",
        "kind",
        "raw",
        "event",
        "position",
        "_job_frame",
        "_tenant_frame",
        "_job_message",
        "_tenant_message",
    )

    def __init__(
        self,
        partition: int,
        offset: int,
        timestamp_ms: int,
        job_id: str,
        tenant: str,
        seq: int,
        type_: str,
        kind: str,
        raw: bytes,
        event: JobEvent | wire.WireEvent | None = None,
    ) -> None:
        self.partition = partition
        self.offset = offset
        self.timestamp_ms = timestamp_ms
        self.job_id = job_id
        self.tenant = tenant
        self.seq = seq
        self.type = type_
        self.kind = kind
        self.raw = raw  # the event's JSON exactly as on Kafka: the SSE data
        self.event = event
        self.position: tuple[int, ...] | None = None  # the tail's position after this event (multi-job id)
        self._job_frame: bytes | None = None
        self._tenant_frame: bytes | None = None
        self._job_message: str | None = None
        self._tenant_message: str | None = None

    @classmethod
    def from_kafka(cls, partition: int, offset: int, timestamp_ms: int, value: bytes, parse_model: bool) -> Entry:
        """Raises ValueError for a record that is not a job event."""
        e = wire.decode_event(value)  # e.raw is one line, as an SSE data line must be
        return cls(
            partition,
            offset,
            timestamp_ms,
            e.job_id,
            e.tenant,
            e.seq,
            e.type.value,
            e.kind,
            e.raw,
            e if parse_model else None,  # the model is built only by whoever keeps the event
        )

    @classmethod
    def from_event(cls, event: JobEvent, partition: int, offset: int) -> Entry:
        return cls(
            partition,
            offset,
            int(event.ts.timestamp() * 1000),
            event.job_id,
            event.tenant,
            event.seq,
            event.type.value,
            event.kind,
            wire.dumps(event),
            event,
        )

    def row(self, received: float) -> tuple:
        """The compact form kept in the recent window: a tuple of atomic values, which CPython's
        collector stops tracking — tens of thousands of window objects would otherwise make every
        full collection pause the loop for hundreds of milliseconds."""
        return (
            self.partition,
            self.offset,
            self.timestamp_ms,
            self.job_id,
            self.tenant,
            self.seq,
            self.type,
            self.kind,
            self.raw,
            received,
        )

    @classmethod
    def from_row(cls, row: tuple) -> Entry:
        return cls(*row[:9])

    @property
    def terminal(self) -> bool:
        return self.type in _TERMINAL

    def job_frame(self) -> bytes:
        """The per-job stream frame: ``id`` is the job's seq."""
        if self._job_frame is None:
            self._job_frame = b"id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, self.type.encode(), self.raw)
        return self._job_frame

    def tenant_frame(self, position: list[int] | None = None) -> bytes:
        """The multi-job stream frame: ``id`` is a position (see ``positions``); by default the
        tail's position right after this event, shared by every client."""
        if position is not None:
            return b"id: %s\nevent: %s\ndata: %s\n\n" % (
                positions.encode(position).encode(),
                self.type.encode(),
                self.raw,
            )
        if self._tenant_frame is None:
            self._tenant_frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                positions.encode(self.position or ()).encode(),
                self.type.encode(),
                self.raw,
            )
        return self._tenant_frame

    def job_message(self) -> str:
        """The per-job WebSocket message: ``id`` is the job's seq (as a string, like the SSE id)."""
        if self._job_message is None:
            self._job_message = f'{{"id":"{self.seq}","event":"{self.type}","data":{self.raw.decode()}}}'
        return self._job_message

    def tenant_message(self, position: list[int] | None = None) -> str:
        """The multi-job WebSocket message: ``id`` is a position, as on the SSE stream."""
        if position is not None:
            return f'{{"id":"{positions.encode(position)}","event":"{self.type}","data":{self.raw.decode()}}}'
        if self._tenant_message is None:
            position_id = positions.encode(self.position or ())
            self._tenant_message = f'{{"id":"{position_id}","event":"{self.type}","data":{self.raw.decode()}}}'
        return self._tenant_message
