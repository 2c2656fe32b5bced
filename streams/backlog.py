"""Jobs waiting to start, per tenant, and how fast each tenant's jobs start: from a tail of ``jobs.events``.

Every API process reads all of ``jobs.events`` (no group, nothing committed): a ``queued`` event adds
its job to the waiting set, the job's first ``running`` event or any terminal event (cancelled or
expired before it ran) takes it out. So every process counts every tenant's jobs, whichever
process accepted them, and a restarted process counts them again: at start it reads the events of
the last ``JOBSTREAM_TENANT_BACKLOG_WINDOW_S`` (offsets for times); a job still waiting after that
long is no longer counted (nor a job queued before the window that never started).

A process also adds the jobs it accepts itself *before* producing them (``hold``; ``release`` if the
produce failed), so a burst is counted at once, not one tail lag later. A job replayed by a replay
(its queued event names a ``replay_id``) is not a tenant's submit: it is in the queue order (it is
ahead of later jobs) but not in its tenant's count.

The queue order is the order this process saw the queued events in (within a partition: offset
order; across partitions: as fetched, within ~100 ms of submit order). ``position`` is the number of
jobs still waiting that were queued before the job; ``rate`` (jobs started per second, smoothed)
turns it into an ETA.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from confluent_kafka import Message, TopicPartition

from streams import topics, wire
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader, partitions_of

logger = logging.getLogger(__name__)

_GONE = frozenset({"running", "succeeded", "failed", "cancelled"})  # no longer waiting
_SMOOTHING = 0.3  # weight of the last second in the start rates


@dataclass(frozen=True, slots=True)
class QueuePlace:
    """Where a waiting job stands: jobs ahead of it, and an estimate of seconds until it starts."""

    ahead: int
    eta_s: float | None  #: None: no start measured yet (nothing to extrapolate from)


class TenantBacklog(KafkaReader):
    """Waiting jobs per tenant, the queue order, and start rates; safe to read from any thread."""

    chunk_size = 2000
    tick_s = 1.0  #: how often the start rates are updated and too old entries dropped

    def __init__(
        self,
        kafka: KafkaConnection,
        topic: str,
        window_s: float,
        on_tick: Callable[[TenantBacklog], None] | None = None,
        fetch: dict[str, int] | None = None,
    ) -> None:
        """``fetch``: librdkafka fetch settings (``Settings.bulk_reader_fetch``)."""
        super().__init__(
            kafka,
            topic,
            group_id=topics.reader_group(topic),  # never joins or commits
            name="tenant-backlog",
            **{"enable.partition.eof": False, "fetch.wait.max.ms": 100, **(fetch or {})},
        )
        self.window_s = window_s
        self._on_tick = on_tick
        self._lock = threading.Lock()
        self._next = 0  # the next queue number
        # job id -> (tenant, or None for a replay; queue number; when queued, epoch seconds)
        self._jobs: dict[str, tuple[str | None, int, float]] = {}
        # Queue numbers in order, from ``_head`` on; ``_removed``: those in it that left out of order.
        # Jobs mostly leave from the front, so a removal is O(1) and a position O(log n + out of order).
        self._order: list[int] = []
        self._head = 0
        self._removed: set[int] = set()
        self._by_number: dict[int, str] = {}
        self._waiting: dict[str, int] = {}  # tenant -> waiting jobs (replays not counted)
        self._starts: dict[str, int] = {}  # tenant -> first starts since the last tick
        self._rates: dict[str, float] = {}  # tenant -> first starts per second, smoothed
        self.rate = 0.0  #: every tenant's first starts per second, smoothed
        self._found: dict[int, int] = {}
        self._last_tick = time.monotonic()

    # --- what the API asks -----------------------------------------------------------------
    def waiting(self, tenant: str) -> int:
        return self._waiting.get(tenant, 0)

    def waiting_by_tenant(self) -> dict[str, int]:
        with self._lock:
            return {t: n for t, n in self._waiting.items() if n}

    def tenant_rate(self, tenant: str) -> float:
        """Jobs of ``tenant`` started per second, smoothed over the last seconds (0: none lately)."""
        return self._rates.get(tenant, 0.0)

    def place(self, job_id: str) -> QueuePlace | None:
        """Where a waiting job stands (None: not waiting as far as this process knows)."""
        with self._lock:
            known = self._jobs.get(job_id)
            if known is None:
                return None
            number = known[1]
            ahead = bisect.bisect_left(self._order, number, self._head) - self._head
            ahead -= sum(1 for r in self._removed if r < number)
        rate = self.rate
        return QueuePlace(ahead, round(ahead / rate, 1) if rate > 0 else None)

    def hold(self, tenant: str, job_ids: list[str]) -> None:
        """Count jobs this process is about to produce (before the send: their events come after)."""
        now = time.time()
        with self._lock:
            for job_id in job_ids:
                self._add(job_id, tenant, now)

    def release(self, job_ids: list[str]) -> None:
        """Jobs whose produce failed: not waiting (if one landed after all, its queued event counts it again)."""
        with self._lock:
            for job_id in job_ids:
                self._remove(job_id)

    # --- the tail --------------------------------------------------------------------------
    def attach(self) -> None:
        since_ms = int((time.time() - self.window_s) * 1000)
        wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions_of(self.consumer, self.topic)]
        self._found = {tp.partition: tp.offset for tp in self.consumer.offsets_for_times(wanted, timeout=10)}
        super().attach()

    def start_offset(self, partition: int, low: int, high: int) -> int:
        found = self._found.get(partition, -1)
        return high if found < 0 else found

    def round(self) -> None:
        super().round()
        now = time.monotonic()
        if now - self._last_tick >= self.tick_s:
            self._tick(now)

    def handle(self, messages: list[Message]) -> None:
        now = time.time()
        with self._lock:
            jobs = self._jobs
            for message in messages:
                raw = message.value() or b""
                head = wire.peek(raw)
                if head is not None:  # most events need no parse (a running one does: its attempt counts)
                    type_, job_id, _ = head
                    if type_ == "queued":
                        if job_id in jobs:
                            continue  # counted already (this process held it)
                    elif type_ != "running":
                        if type_ in _GONE:
                            self._remove(job_id)
                        continue
                try:
                    event = orjson.loads(raw)
                    type_, job_id, tenant = event["type"], event["job_id"], event["tenant"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    continue  # not an event: the services that need it say so
                if type(job_id) is not str or type(tenant) is not str:
                    continue
                if type_ == "queued":
                    if job_id not in self._jobs:
                        data = event.get("data")
                        replay = isinstance(data, dict) and data.get("replay_id") is not None
                        ts_ms = message.timestamp()[1]
                        self._add(job_id, None if replay else tenant, ts_ms / 1000 if ts_ms > 0 else now)
                elif type_ in _GONE:
                    if type_ == "running":
                        data = event.get("data")
                        if isinstance(data, dict) and data.get("attempt", 1) == 1:
                            self._starts[tenant] = self._starts.get(tenant, 0) + 1
                    self._remove(job_id)

    def on_loaded(self) -> None:
        logger.info("%s counted %d waiting jobs", self.name, len(self._jobs))

    # --- inside the lock -------------------------------------------------------------------
    def _add(self, job_id: str, tenant: str | None, now: float) -> None:
        if job_id in self._jobs:
            return
        number = self._next
        self._next += 1
        self._jobs[job_id] = (tenant, number, now)
        self._order.append(number)  # numbers only grow: appending keeps the order sorted
        self._by_number[number] = job_id
        if tenant is not None:
            self._waiting[tenant] = self._waiting.get(tenant, 0) + 1

    def _remove(self, job_id: str) -> None:
        known = self._jobs.pop(job_id, None)
        if known is None:
            return
        tenant, number, _ = known
        order = self._order
        if number != order[self._head]:
            self._removed.add(number)
        else:
            self._head += 1
            while self._head < len(order) and order[self._head] in self._removed:
                self._removed.discard(order[self._head])
                self._head += 1
            if self._head > 4096 and self._head * 2 > len(order):
                del order[: self._head]
                self._head = 0
        self._by_number.pop(number, None)
        if tenant is not None:
            left = self._waiting.get(tenant, 1) - 1
            if left > 0:
                self._waiting[tenant] = left
            else:
                self._waiting.pop(tenant, None)

    def _tick(self, now: float) -> None:
        elapsed = now - self._last_tick
        self._last_tick = now
        with self._lock:
            starts, self._starts = self._starts, {}
            total = 0
            for tenant in set(self._rates) | set(starts):
                instant = starts.get(tenant, 0) / elapsed
                total += starts.get(tenant, 0)
                old = self._rates.get(tenant)
                rate = instant if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * instant
                if rate < 0.01 and tenant not in self._waiting:
                    self._rates.pop(tenant, None)
                else:
                    self._rates[tenant] = rate
            instant = total / elapsed
            self.rate = instant if self.rate == 0 else (1 - _SMOOTHING) * self.rate + _SMOOTHING * instant
            cutoff = time.time() - self.window_s  # never started within the window: no longer counted
            while self._head < len(self._order):
                job_id = self._by_number[self._order[self._head]]
                if self._jobs[job_id][2] >= cutoff:
                    break
                self._remove(job_id)
        if self._on_tick is not None:
            self._on_tick(self)
