"""Adaptive dynamic batching: which jobs run together, and when.

``BatchPolicy`` (pure) sizes the next batch and says how long to wait for it: the wait is
spent only when the last calculation process is free and more jobs are expected, and a batch
is capped to run within half the latency target. ``Batcher`` holds one worker's pending jobs,
grouped by (kind, batch key), ordered by priority, then between tenants by start-time fair queueing
(each tenant's jobs are spaced ``1/weight`` apart in a virtual time per priority, so a busy tenant's
backlog does not stand in front of another tenant's new job), with retry delays; a job held for
``JOBSTREAM_PRIORITY_AGEING_S`` goes ahead of every younger one (no starvation); ``clear()`` drops
them on a rebalance. ``JOBSTREAM_BATCH_MAX_SIZE=1`` turns batching off.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from streams.partitioning import HIGH_PRIORITY
from streams.settings import Settings

T = TypeVar("T")

__all__ = ["HIGH_PRIORITY", "BatchPolicy", "Batcher", "Plan"]  # HIGH_PRIORITY: never waits for a batch to fill
_PRUNE_TENANTS = 10_000  # tenants remembered per priority before the idle ones are forgotten
_RATE_TAU_S = 1.0  # arrival-rate memory
_COST_ALPHA = 0.3  # weight of the newest batch in the per-job cost estimate


@dataclass(frozen=True)
class Plan:
    size: int  #: most jobs to take into the batch
    wait_s: float  #: wait this much longer before dispatching (0: now)


@dataclass(frozen=True)
class BatchPolicy:
    max_size: int
    max_wait_s: float
    latency_target_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> BatchPolicy:
        return cls(settings.batch_max_size, settings.batch_max_wait_ms / 1000, settings.latency_target_ms / 1000)

    def size_cap(self, cost_per_job_s: float | None) -> int:
        """Largest batch that still runs within half the latency target (the other half is for waiting)."""
        if self.max_size <= 1 or not cost_per_job_s or cost_per_job_s <= 0:
            return self.max_size
        return max(1, min(self.max_size, math.floor(self.latency_target_s / 2 / cost_per_job_s)))

    def plan(
        self,
        *,
        waiting: int,
        oldest_wait_s: float,
        arrival_rate: float,
        cost_per_job_s: float | None,
        top_priority: int = 0,
        idle_slots: int = 1,
    ) -> Plan:
        """Decide for the best group of ready jobs: take ``size`` of them after ``wait_s`` more seconds.

        ``idle_slots`` counts the calculation processes free right now, the one this batch would take
        included: with another one free, the next job can start at once anyway, so nothing is gained
        by holding this one back.
        """
        size = self.size_cap(cost_per_job_s)
        if size <= 1 or waiting >= size or top_priority >= HIGH_PRIORITY or idle_slots > 1:
            return Plan(min(size, max(waiting, 1)), 0.0)
        missing = size - waiting
        # Expected arrivals in what is left of the window: under one, and waiting only adds latency.
        window_left = self.max_wait_s - oldest_wait_s
        if window_left <= 0 or arrival_rate * window_left < 1.0:
            return Plan(size, 0.0)
        fill_s = missing / arrival_rate
        run_s = (cost_per_job_s or 0.0) * size
        budget_left = self.latency_target_s - oldest_wait_s - run_s
        wait = max(0.0, min(window_left, fill_s, budget_left))
        return Plan(size, wait)


@dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    group: Hashable
    priority: int
    arrived: float
    ready_at: float
    tag: float = 0.0  #: start tag in its priority's virtual time: the fair-queueing order between tenants
    seq: int = 0  #: arrival order, for equal tags
    removed: bool = False


_Heap = list[tuple[float, int, _Entry[T]]]


class _Group(Generic[T]):
    """Live entries of one group, one heap per priority ordered by start tag."""

    def __init__(self) -> None:
        self.by_priority: dict[int, _Heap[T]] = {}
        self.size = 0

    def add(self, entry: _Entry[T]) -> None:
        heapq.heappush(self.by_priority.setdefault(entry.priority, []), (entry.tag, entry.seq, entry))
        self.size += 1

    def _queues(self) -> Iterator[_Heap[T]]:
        for priority in sorted(self.by_priority, reverse=True):
            heap = self.by_priority[priority]
            while heap and heap[0][2].removed:
                heapq.heappop(heap)
            if heap:
                yield heap
            else:
                del self.by_priority[priority]

    def best(self) -> _Entry[T] | None:
        return next((heap[0][2] for heap in self._queues()), None)

    def oldest_arrival(self) -> float:
        """Arrival of the oldest job (the heads of the heaps: cheap, and exact for one tenant but for retries)."""
        return min((heap[0][2].arrived for heap in self._queues()), default=0.0)

    def take(self, count: int) -> list[_Entry[T]]:
        taken: list[_Entry[T]] = []
        for heap in list(self._queues()):
            while heap and len(taken) < count:
                entry = heapq.heappop(heap)[2]
                if not entry.removed:
                    entry.removed = True
                    taken.append(entry)
            if len(taken) >= count:
                break
        self.size -= len(taken)
        return taken

    def take_entry(self, entry: _Entry[T]) -> None:
        """Take one particular live entry (an aged one); its heap drops it lazily."""
        entry.removed = True
        self.size -= 1


class Batcher(Generic[T]):
    """The jobs a worker holds but has not started, and the batches they form."""

    def __init__(
        self,
        policy: BatchPolicy,
        clock: Callable[[], float] = time.monotonic,
        idle_slots: Callable[[], int] = lambda: 1,
        ageing_s: float = math.inf,
    ) -> None:
        self.policy = policy
        self.ageing_s = ageing_s
        self._vtime: dict[int, float] = {}  # per priority: the start tag of the latest job taken
        self._finish_tags: dict[tuple[int, str], float] = {}  # (priority, tenant): its latest job's finish tag
        self._arrivals: deque[_Entry[T]] = deque()  # entries in the groups, in the order they came (ageing)
        self._clock = clock
        self._idle_slots = idle_slots
        self._groups: dict[Hashable, _Group[T]] = {}
        self._delayed: list[tuple[float, int, _Entry[T]]] = []
        self._order = itertools.count()
        self._size = 0
        self._changed = asyncio.Event()
        self._rate = 0.0
        self._rate_at = clock()
        self._cost: dict[Hashable, float] = {}
        self.last_plan: Plan | None = None

    def __len__(self) -> int:
        return self._size

    # --- input ---------------------------------------------------------------
    def add(
        self,
        item: T,
        group: Hashable,
        priority: int = 0,
        delay_s: float = 0.0,
        *,
        count_arrival: bool = True,
        arrived: float | None = None,
        tenant: str = "",
        weight: float = 1.0,
    ) -> None:
        """Queue a job; ``delay_s`` keeps it back (retry backoff). Retries keep their first ``arrived``.

        A new job (``count_arrival``) of ``tenant`` starts, in virtual time, where the tenant's previous
        job of its priority ends, or now if that is past; ``weight`` is its tenant's share (its jobs are
        ``1/weight`` apart). A job coming back (a retry, a requeue) is not charged again: it starts now."""
        now = self._clock()
        vtime = self._vtime.get(priority, 0.0)
        if count_arrival:
            self._note_arrival(now)
            key = (priority, tenant)
            tag = max(vtime, self._finish_tags.get(key, 0.0))
            self._finish_tags[key] = tag + 1.0 / weight
            if len(self._finish_tags) > _PRUNE_TENANTS:
                self._forget_idle_tenants()
        else:
            tag = vtime
        entry = _Entry(
            item, group, priority, now if arrived is None else arrived, now + delay_s, tag, next(self._order)
        )
        if delay_s > 0:
            heapq.heappush(self._delayed, (entry.ready_at, entry.seq, entry))
        else:
            self._groups.setdefault(group, _Group()).add(entry)
            self._arrivals.append(entry)
        self._size += 1
        self._changed.set()

    def remove_where(self, predicate: Callable[[T], bool]) -> list[T]:
        """Take out every pending job matching ``predicate`` (cancellation)."""
        removed = []
        for group in self._groups.values():
            for heap in group.by_priority.values():
                for _, _, entry in heap:
                    if not entry.removed and predicate(entry.item):
                        entry.removed = True
                        group.size -= 1
                        removed.append(entry.item)
        for _, _, entry in self._delayed:
            if not entry.removed and predicate(entry.item):
                entry.removed = True
                removed.append(entry.item)
        self._groups = {key: group for key, group in self._groups.items() if group.size > 0}
        self._delayed = [d for d in self._delayed if not d[2].removed]
        heapq.heapify(self._delayed)
        self._size -= len(removed)
        if removed:
            self._changed.set()
        return removed

    def clear(self) -> list[T]:
        """Drop every pending job (partitions revoked: they will be delivered again)."""
        dropped = [entry.item for entry in self._live_entries()]
        self._groups.clear()
        self._delayed.clear()
        self._arrivals.clear()
        self._size = 0
        self._changed.set()
        return dropped

    def observe(self, group: Hashable, size: int, duration_s: float) -> None:
        """Feed back how long a batch of ``size`` jobs of ``group`` took (the per-job cost estimate)."""
        if size <= 0 or duration_s < 0:
            return
        cost = duration_s / size
        previous = self._cost.get(group)
        self._cost[group] = cost if previous is None else previous + _COST_ALPHA * (cost - previous)

    def cost_per_job(self, group: Hashable) -> float | None:
        return self._cost.get(group)

    def arrival_rate(self) -> float:
        """Jobs per second arriving lately (exponentially decaying, memory ``_RATE_TAU_S``), not counting
        the latest arrival: one job after a quiet spell says nothing about more coming, so it does not wait."""
        previous = max(0.0, self._rate - 1.0 / _RATE_TAU_S)
        return previous * math.exp(-(self._clock() - self._rate_at) / _RATE_TAU_S)

    # --- output --------------------------------------------------------------
    async def next_batch(self) -> tuple[Hashable, list[T]]:
        """Wait until the policy says a batch should go, then return its group and jobs (best first)."""
        while True:
            self._changed.clear()
            timeout = self._try_plan()
            if isinstance(timeout, tuple):
                return timeout
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def _try_plan(self) -> tuple[Hashable, list[T]] | float | None:
        """A ready batch, or how long to sleep before planning again (None: until something changes)."""
        now = self._clock()
        self._release_delayed(now)
        best = self._aged(now)
        aged = best is not None
        if best is None:
            for group in list(self._groups.values()):
                candidate = group.best()
                if candidate is not None and (
                    best is None
                    or (-candidate.priority, candidate.tag, candidate.seq) < (-best.priority, best.tag, best.seq)
                ):
                    best = candidate
        next_ready = self._delayed[0][0] - now if self._delayed else None
        if best is None:
            return next_ready
        group = self._groups[best.group]
        plan = self.policy.plan(
            waiting=group.size,
            oldest_wait_s=now - group.oldest_arrival(),
            arrival_rate=self.arrival_rate(),
            cost_per_job_s=self._cost.get(best.group),
            top_priority=HIGH_PRIORITY if aged else best.priority,
            idle_slots=self._idle_slots(),
        )
        self.last_plan = plan
        if plan.wait_s <= 0:
            if aged:  # the aged job first, then the group's best
                group.take_entry(best)
                taken = [best, *group.take(plan.size - 1)]
            else:
                taken = group.take(plan.size)
            self._size -= len(taken)
            if group.size <= 0:
                del self._groups[best.group]
            vtime = self._vtime
            for entry in taken:
                if entry.tag > vtime.get(entry.priority, 0.0):
                    vtime[entry.priority] = entry.tag
            return best.group, [entry.item for entry in taken]
        return plan.wait_s if next_ready is None else min(plan.wait_s, max(next_ready, 0.0))

    # --- internals -----------------------------------------------------------
    def _note_arrival(self, now: float) -> None:
        self._rate = self._rate * math.exp(-(now - self._rate_at) / _RATE_TAU_S) + 1.0 / _RATE_TAU_S
        self._rate_at = now

    def _release_delayed(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self._delayed)
            if not entry.removed:
                entry.tag = max(entry.tag, self._vtime.get(entry.priority, 0.0))
                self._groups.setdefault(entry.group, _Group()).add(entry)
                self._arrivals.append(entry)

    def _aged(self, now: float) -> _Entry[T] | None:
        """The oldest held job, if it has waited ``ageing_s``: it goes before every younger job, whatever their
        priority or tenant (the order of arrival at this worker; a retry counts from when it came back)."""
        arrivals = self._arrivals
        while arrivals and arrivals[0].removed:
            arrivals.popleft()
        if arrivals and now - arrivals[0].arrived >= self.ageing_s:
            return arrivals[0]
        return None

    def _forget_idle_tenants(self) -> None:
        """Drop finish tags already behind their priority's virtual time (they no longer change any tag)."""
        vtime = self._vtime
        self._finish_tags = {k: tag for k, tag in self._finish_tags.items() if tag > vtime.get(k[0], 0.0)}

    def _live_entries(self) -> list[_Entry[T]]:
        entries = [
            e for group in self._groups.values() for q in group.by_priority.values() for _, _, e in q if not e.removed
        ]
        return entries + [d[2] for d in self._delayed if not d[2].removed]
