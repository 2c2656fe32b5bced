"""``GET /v1/jobs/{id}/events``: one job's history, then its live events, ids = the job's seq.

Subscribe and copy the window in the same instant, read the sink's committed offsets and
ClickHouse, send their union (one event per seq, after ``Last-Event-ID``, only what
``visibility`` shows), then live events above the last seq. When ClickHouse and the window
leave a hole (the sink lags more than a window, or retention) the stream waits up to
``JOBSTREAM_SSE_HISTORY_WAIT_S`` and otherwise says ``event: reset``: never a silent skip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from edge.problems import Problem
from sse_gateway.client_stream import ClientStream, StreamConfig
from sse_gateway.entry import Entry
from sse_gateway.fanout import Fanout
from sse_gateway.formats import Format, P
from sse_gateway.history import ajob_history
from sse_gateway.reasons import ResetReason
from sse_gateway.visibility import Visibility
from store.clickhouse import ClickHouseStore
from streams.errors import JobstreamError
from telemetry import metrics

logger = logging.getLogger(__name__)


class ClientHasEverything(JobstreamError):
    """Last-Event-ID is at or past the job's terminal event: nothing left to send (HTTP 204)."""


def merge_by_seq(*sources: list[Entry]) -> list[Entry]:
    """One entry per seq (the first source wins), in seq order."""
    by_seq: dict[int, Entry] = {}
    for source in sources:
        for entry in source:
            by_seq.setdefault(entry.seq, entry)
    return [by_seq[seq] for seq in sorted(by_seq)]


class JobStream(ClientStream[P]):
    """One client's stream of one job: ``open()`` (may answer 404/503/204), then ``frames()``."""

    def __init__(
        self,
        fanout: Fanout,
        store: ClickHouseStore,
        config: StreamConfig,
        tenant: str,
        fmt: Format[P],
        job_id: str,
        last: int,
    ) -> None:
        super().__init__(fanout, store, config, tenant, fmt)
        self.job_id = job_id
        self.last = last
        self._window: list[Entry] = []
        self._window_start: list[int] = []
        self._known: list[Entry] = []
        self._partition: int | None = None
        self._committed: list[int] = []

    async def open(self) -> None:
        """Subscribe and read history. Raises Problem 404 (unknown job) / 503 (cannot tell yet),
        or ClientHasEverything."""
        self.sub, window, self._window_start = self.fanout.subscribe_job(self.job_id)
        try:
            self._window = self._mine(window)
            committed = await self.fanout.sink_committed()
            self._known = merge_by_seq(await ajob_history(self.store, self.tenant, self.job_id), self._window)
            if not self._known:  # maybe the tail has not reached it yet (another process accepted it)
                await self.fanout.wait_caught_up(self.config.catchup_wait_s)
                self._window += self._mine(self.fanout.job_window(self.job_id)) + self._mine(list(self.sub.items))
                self._known = merge_by_seq(self._window)
            if not self._known:
                if all(self._covered(p, committed) for p in range(self.fanout.partitions)):
                    raise Problem(404, "Job not found", f"no job {self.job_id!r}")
                raise Problem(
                    503,
                    "History not available yet",
                    "the sink is behind; retry shortly",
                    headers={"Retry-After": str(self.config.retry_after_s)},
                )
            self._partition = self._known[0].partition
            self._committed = committed
            terminal = next((e for e in self._known if e.terminal), None)
            if terminal is not None and self.last >= terminal.seq:
                raise ClientHasEverything()
        except BaseException:
            self.close()
            raise

    def _mine(self, entries: list[Entry]) -> list[Entry]:
        return [e for e in entries if e.tenant == self.tenant]

    def _covered(self, partition: int, committed: list[int]) -> bool:
        start = self._window_start[partition]
        return committed[partition] >= start or start <= self.fanout.start_low[partition]

    def _complete(self) -> bool:
        """History reaches back to the job's start, or at least to Last-Event-ID."""
        return any(e.type == "queued" or e.seq <= self.last for e in self._known)

    async def frames(self) -> AsyncIterator[list[P]]:
        """Chunks of pieces: history after ``last``, then live, to the terminal event."""
        assert self.sub is not None and self._partition is not None
        s = self.config
        fmt = self.fmt
        loop = asyncio.get_running_loop()
        reset: tuple[ResetReason, str] | None = None
        # 1. the sink lags more than the window: wait for it, or say so
        if not self._covered(self._partition, self._committed):
            waited_until = loop.time() + s.history_wait_s
            while not self._covered(self._partition, self._committed) and loop.time() < waited_until:
                yield self._optional(fmt.waiting())
                await asyncio.sleep(s.history_poll_s)
                if self.sub.closed:
                    return
                self._committed = await self.fanout.sink_committed()
            if self._covered(self._partition, self._committed):
                self._known = merge_by_seq(await ajob_history(self.store, self.tenant, self.job_id), self._window)
            else:
                reset = (ResetReason.HISTORY_LAGGING, "the sink is further behind than the gateway's recent window")
        if reset is None and not self._complete():
            reset = (ResetReason.HISTORY_UNAVAILABLE, "this job's early events are no longer stored")
        # 2. history after Last-Event-ID (or the reset, and on from the newest event we know); what
        # the stream shows is decided on the whole known history, in Kafka order, so a resumed
        # stream hides a re-run exactly as a live one did (see visibility)
        visibility = Visibility()
        shown = {e.seq for e in sorted(self._known, key=lambda e: (e.partition, e.offset)) if visibility.admit(e)}
        last_sent = self.last
        if reset is not None:
            yield self._first([self._reset(*reset)])
            terminal = next((e for e in self._known if e.terminal), None)
            if terminal is not None:  # the job is over: nothing live can follow its terminal seq
                if terminal.seq > self.last:
                    yield [fmt.job(terminal)]
                return
            last_sent = max([last_sent, *(e.seq for e in self._known)])
        else:
            history = [e for e in self._known if e.seq > last_sent and e.seq in shown]
            last_sent = max([last_sent, *(e.seq for e in self._known)])
            if history:
                yield self._first([fmt.job(e) for e in history])
                if any(e.terminal for e in history):
                    return
        # 3. live (the fanout's ticker wakes us for heartbeats and ends us at the maximum lifetime)
        while True:
            items = await self.sub.wait()
            chunk: list[P] = []
            ended = False
            for entry in items:
                if entry.seq > last_sent and entry.tenant == self.tenant:
                    last_sent = entry.seq
                    if not visibility.admit(entry):
                        continue
                    chunk.append(fmt.job(entry))
                    if entry.terminal:
                        ended = True
                        break
            if chunk:
                yield self._first(chunk)
            if ended:
                return
            if self.sub.closed:
                if goodbye := self._goodbye(self.sub):
                    yield goodbye
                return
            if not items and self.sub.heartbeat_due():
                yield self._optional(fmt.heartbeat(None))

    def _reset(self, reason: ResetReason, detail: str) -> P:
        metrics.SSE_RESETS.labels("job").inc()
        logger.info("SSE reset for job %s: %s", self.job_id, reason, extra={"job_id": self.job_id})
        return self.fmt.control(
            "reset",
            {
                "reason": reason,
                "detail": detail,
                "job_id": self.job_id,
                "action": f"reload the job from GET /v1/jobs/{self.job_id}; live events follow",
            },
        )
