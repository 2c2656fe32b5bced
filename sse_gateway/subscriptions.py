"""Who is listening: each client's bounded queue (``Subscription``) and the registry of them all
(``Subscriptions``), by job for per-job streams and by tenant for multi-job streams.

A subscriber whose queue is full is closed with reason ``slow_client`` and dropped; nobody else
waits for it. One ticker gives every subscription its heartbeats and its maximum lifetime.
Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable

from sse_gateway.entry import Entry
from sse_gateway.reasons import CloseReason
from telemetry import metrics

logger = logging.getLogger(__name__)


class Subscription:
    """A client's bounded queue. ``close(reason)`` wakes its reader; ``reason`` says why.

    Waiting costs no timer: the ticker of ``Subscriptions`` wakes a subscription that has waited a
    heartbeat interval (``beat``) or outlived its deadline (closed as ``max_lifetime``) — one timer
    for all clients instead of one per wait, which at thousands of clients is most of the CPU.
    """

    __slots__ = (
        "key",
        "accepts",
        "maxsize",
        "items",
        "closed",
        "reason",
        "beat",
        "deadline",
        "waiting_since",
        "_waiter",
    )

    def __init__(
        self, key: str, maxsize: int, accepts: Callable[[Entry], bool] | None = None, deadline: float = float("inf")
    ) -> None:
        self.key = key
        self.accepts = accepts
        self.maxsize = maxsize
        self.items: deque[Entry] = deque()
        self.closed = False
        self.reason: CloseReason | None = None
        self.beat = False  # a heartbeat is due
        self.deadline = deadline  # loop time at which the stream ends (max lifetime)
        self.waiting_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    def push(self, entry: Entry) -> bool:
        """Queue an event; False when the queue just overflowed (and is now closed as ``slow_client``)."""
        if self.closed:
            return True  # already on its way out; nothing more to do
        if len(self.items) >= self.maxsize:
            self.close(CloseReason.SLOW_CLIENT)
            return False
        self.items.append(entry)
        self._wake()
        return True

    def close(self, reason: CloseReason) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if reason == CloseReason.SLOW_CLIENT:
            self.items.clear()  # the client resumes by Last-Event-ID; free the memory now
        self._wake()

    def tick(self, now: float, heartbeat_s: float) -> None:
        """Called by the ticker: a heartbeat when idle that long, the end at the deadline."""
        if now >= self.deadline:
            self.close(CloseReason.MAX_LIFETIME)
        elif self._waiter is not None and now - self.waiting_since >= heartbeat_s:
            self.beat = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> list[Entry]:
        """Everything queued, waiting for the first item; empty when closed or a heartbeat is due."""
        if not self.items and not self.closed and not self.beat:
            loop = asyncio.get_running_loop()
            self.waiting_since = loop.time()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if not self.items:
            return []
        items = list(self.items)
        self.items.clear()
        self.beat = False  # events just went out: no heartbeat needed yet
        return items

    def heartbeat_due(self) -> bool:
        due, self.beat = self.beat, False
        return due


class Subscriptions:
    """Every open subscription, by job and by tenant, and the one timer that ticks them."""

    def __init__(self, *, queue_size: int, heartbeat_s: float, max_stream_s: float) -> None:
        self.queue_size = queue_size  # JOBSTREAM_SSE_QUEUE_SIZE
        self.heartbeat_s = heartbeat_s  # JOBSTREAM_SSE_HEARTBEAT_S
        self.max_stream_s = max_stream_s  # JOBSTREAM_SSE_MAX_STREAM_S
        self.overflows = 0  #: subscribers dropped because their queue was full
        self._by_job: dict[str, set[Subscription]] = {}
        self._by_tenant: dict[str, set[Subscription]] = {}
        self._overflowed: list[Subscription] = []
        self._ticker: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return sum(map(len, self._by_job.values())) + sum(map(len, self._by_tenant.values()))

    def job(self, job_id: str) -> Subscription:
        """A new subscription to one job's events."""
        sub = Subscription(job_id, self.queue_size, deadline=self._deadline())
        self._by_job.setdefault(job_id, set()).add(sub)
        return sub

    def tenant(self, tenant: str, accepts: Callable[[Entry], bool] | None) -> Subscription:
        """A new subscription to a tenant's events that ``accepts`` (all if None)."""
        sub = Subscription(tenant, self.queue_size, accepts, deadline=self._deadline())
        self._by_tenant.setdefault(tenant, set()).add(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        for table in (self._by_job, self._by_tenant):
            subs = table.get(sub.key)
            if subs is not None and sub in subs:
                subs.discard(sub)
                if not subs:
                    del table[sub.key]

    def offer(self, entry: Entry, position: list[int]) -> None:
        """Queue ``entry`` for its job's subscribers and for its tenant's that accept it; those get
        ``position`` (the tail's position after it) as the entry's id."""
        subs = self._by_job.get(entry.job_id)
        if subs:
            for sub in subs:
                if not sub.push(entry):
                    self._overflowed.append(sub)
        subs = self._by_tenant.get(entry.tenant)
        if subs:
            entry.position = tuple(position)
            for sub in subs:
                if sub.accepts is None or sub.accepts(entry):
                    if not sub.push(entry):
                        self._overflowed.append(sub)

    def drop_overflowed(self) -> None:
        """Remove the subscribers whose queue overflowed in the offers since the last call."""
        dead, self._overflowed = self._overflowed, []
        for sub in dead:
            if sub.reason == CloseReason.SLOW_CLIENT:
                self.overflows += 1
                metrics.SSE_SLOW_DROPPED.labels("queue_full").inc()
                logger.info("dropped a slow SSE client (queue of %d full)", sub.maxsize, extra={"key": sub.key})
            self.remove(sub)

    def start(self) -> None:
        """Start the ticker (on the running loop)."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def close_all(self, reason: CloseReason) -> None:
        """Stop the ticker and close every subscription (their streams end with ``reason``)."""
        if self._ticker is not None:
            self._ticker.cancel()
        for subs in [*self._by_job.values(), *self._by_tenant.values()]:
            for sub in list(subs):
                sub.close(reason)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.max_stream_s

    async def _tick(self) -> None:
        """Heartbeats and lifetimes of every subscription, on one timer."""
        period = max(0.05, min(1.0, self.heartbeat_s / 4, self.max_stream_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for table in (self._by_job, self._by_tenant):
                for subs in list(table.values()):
                    for sub in list(subs):
                        sub.tick(now, self.heartbeat_s)
