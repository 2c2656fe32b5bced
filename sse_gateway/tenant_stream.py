"""``GET /v1/events``: every event of the caller's jobs, filtered, for dashboards; never ends.

Ids are positions in ``jobs.events`` (``positions``); a fresh stream starts live and says its
position at once, and heartbeats carry it, so a quiet stream still resumes near where it was.
A resume reads ClickHouse, then the window, then live; a position no longer held, past the
end, or more than ``JOBSTREAM_SSE_RESUME_MAX_EVENTS`` behind gets ``event: reset``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import AsyncIterator, Iterable

from sse_gateway import positions
from sse_gateway.client_stream import ClientStream, StreamConfig
from sse_gateway.entry import Entry
from sse_gateway.fanout import Fanout
from sse_gateway.formats import Format, P
from sse_gateway.history import afirst_offsets, atenant_history
from sse_gateway.reasons import ResetReason
from store.clickhouse import ClickHouseStore
from streams.events import EventType, JobStatus, next_status
from telemetry import metrics

logger = logging.getLogger(__name__)

REPLAY_CHUNK = 500


class EventFilter:
    """Which events a multi-job stream wants: by kind, by the status an event moves a job to, by job."""

    def __init__(
        self, kinds: Iterable[str] = (), statuses: Iterable[JobStatus] = (), job_ids: Iterable[str] = ()
    ) -> None:
        self.kinds = frozenset(kinds)
        statuses = frozenset(statuses)
        self.types = frozenset(t.value for t in EventType if next_status(None, t) in statuses)
        self.job_ids = frozenset(job_ids)

    @property
    def active(self) -> bool:
        return bool(self.kinds or self.types or self.job_ids)

    def __call__(self, entry: Entry) -> bool:
        return (
            (not self.kinds or entry.kind in self.kinds)
            and (not self.types or entry.type in self.types)
            and (not self.job_ids or entry.job_id in self.job_ids)
        )


class TenantStream(ClientStream[P]):
    """One client's stream of a tenant's events: ``open()``, then ``frames()``."""

    def __init__(
        self,
        fanout: Fanout,
        store: ClickHouseStore,
        config: StreamConfig,
        tenant: str,
        fmt: Format[P],
        accepts: EventFilter,
        resume: list[int] | None,
    ) -> None:
        super().__init__(fanout, store, config, tenant, fmt)
        self.accepts = accepts
        self.resume = resume

    def open(self) -> None:
        self.sub = self.fanout.subscribe_tenant(self.tenant, self.accepts if self.accepts.active else None)
        self._start = self.fanout.position()
        self._window_start = list(self.fanout.window_start)
        self._window = (
            self.fanout.tenant_window(self.tenant, self.accepts, self.resume) if self.resume is not None else []
        )

    async def frames(self) -> AsyncIterator[list[P]]:
        assert self.sub is not None
        s = self.config
        fmt = self.fmt
        loop = asyncio.get_running_loop()
        cursor = list(self._start)
        if self.resume is not None:
            # ClickHouse serves what the window no longer holds: [v[p], W[p]) per partition
            need = {p: (v, w) for p, (v, w) in enumerate(zip(self.resume, self._window_start, strict=False)) if v < w}
            reason = await self._unavailable()
            if reason is None and need:
                give_up = loop.time() + s.history_wait_s
                while not await self._sink_covers(need):
                    if loop.time() >= give_up:
                        reason = ResetReason.HISTORY_LAGGING
                        break
                    yield self._optional(fmt.waiting())
                    await asyncio.sleep(s.history_poll_s)
            stored: list[Entry] = []
            if reason is None and need:
                first = await afirst_offsets(self.store, sorted(need))
                if any(v < first.get(p, w) for p, (v, w) in need.items()):
                    reason = ResetReason.POSITION_EXPIRED  # ClickHouse no longer holds it (retention)
            if reason is None and need:
                limit = s.resume_max_events
                stored = await atenant_history(
                    self.store,
                    self.tenant,
                    need,
                    sorted(self.accepts.kinds),
                    sorted(self.accepts.types),
                    sorted(self.accepts.job_ids),
                    limit + 1,
                )
                if len(stored) > limit:
                    reason = ResetReason.TOO_FAR_BEHIND
            if reason is not None:
                logger.info("SSE reset for a tenant stream: %s", reason, extra={"tenant": self.tenant})
                metrics.SSE_RESETS.labels("tenant").inc()
                yield self._first(
                    [
                        fmt.control(
                            "reset",
                            {
                                "reason": reason,
                                "detail": "the events since Last-Event-ID cannot all be replayed",
                                "action": "reload from GET /v1/jobs; live events follow",
                            },
                        )
                    ]
                )
            else:
                cursor = list(self.resume)
                chunk: list[P] = []
                for entry in self._merge(stored):
                    cursor[entry.partition] = entry.offset + 1
                    chunk.append(fmt.tenant(entry, cursor))
                    if len(chunk) >= REPLAY_CHUNK:
                        yield self._first(chunk)
                        chunk = []
                if chunk:
                    yield self._first(chunk)
                cursor = positions.at_least(cursor, self._start)
        # Say where the stream stands now (an id-only frame: no event fires, Last-Event-ID moves).
        ahead = any(c > p for c, p in zip(cursor, self._start, strict=False))  # resumed past where this gateway is
        yield self._first([fmt.position(cursor)])
        while True:  # the fanout's ticker wakes us for heartbeats and ends us at the maximum lifetime
            items = await self.sub.wait()
            if items:
                chunk = []
                for entry in items:
                    if entry.offset < cursor[entry.partition]:
                        continue  # a client resumed past this gateway's tail: already sent elsewhere
                    assert entry.position is not None
                    if ahead:
                        cursor = positions.at_least(cursor, entry.position)
                        ahead = cursor != list(entry.position)
                        chunk.append(fmt.tenant(entry, cursor))
                    else:
                        cursor = list(entry.position)
                        chunk.append(fmt.tenant(entry))
                if chunk:
                    yield chunk
            if self.sub.closed:
                if goodbye := self._goodbye(self.sub):
                    yield goodbye
                return
            if not items and self.sub.heartbeat_due():  # nothing queued: every record passed was offered to us
                tail = self.fanout.position()
                cursor = positions.at_least(cursor, tail)
                ahead = cursor != tail
                yield self._optional(fmt.heartbeat(cursor))

    async def _sink_covers(self, need: dict[int, tuple[int, int]]) -> bool:
        committed = await self.fanout.sink_committed()
        return all(committed[p] >= w for p, (_, w) in need.items())

    async def _unavailable(self) -> ResetReason | None:
        """Why the resume position cannot be served, or None."""
        assert self.resume is not None
        try:
            marks = await self.fanout.watermarks()
        except Exception:  # noqa: BLE001 - Kafka did not answer: do not guess
            logger.warning("could not read watermarks for a resume", exc_info=True)
            return ResetReason.KAFKA_UNAVAILABLE
        for p, (low, high) in enumerate(marks):
            if self.resume[p] > max(high, self._start[p]):
                return ResetReason.UNKNOWN_POSITION
            if self.resume[p] < self._window_start[p] and self.resume[p] < low:
                return ResetReason.POSITION_EXPIRED
        return None

    def _merge(self, stored: list[Entry]) -> list[Entry]:
        """Stored then window events, per partition in offset order, merged across partitions by time;
        a seq a job already had (re-emitted by a processor that ran it again) only once."""
        per_partition: dict[int, list[Entry]] = {}
        last_seq: dict[str, int] = {}
        for entry in [*stored, *self._window]:
            if last_seq.get(entry.job_id, -1) >= entry.seq:
                continue
            last_seq[entry.job_id] = entry.seq
            per_partition.setdefault(entry.partition, []).append(entry)
        return list(heapq.merge(*per_partition.values(), key=lambda e: e.timestamp_ms))
