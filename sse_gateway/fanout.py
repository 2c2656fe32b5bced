"""One Kafka tail per gateway process, fanned out in memory to every SSE subscriber.

Composes the tail (``tail``), the recent window (``window``), the subscriptions
(``subscriptions``) and the offsets a stream's history needs (``offsets``). The tail starts
at ``now - window`` so the window is full at once; window ∪ ClickHouse (below the sink's
committed offset) is gap-free while the sink is less than a window behind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sse_gateway import positions
from sse_gateway.entry import Entry
from sse_gateway.offsets import TopicOffsets
from sse_gateway.reasons import CloseReason
from sse_gateway.subscriptions import Subscription, Subscriptions
from sse_gateway.tail import KafkaTail
from sse_gateway.visibility import Visibility
from sse_gateway.window import RecentWindow
from streams import topics
from streams.events import JobEvent
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import WireEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FanoutConfig:
    """What the fanout needs of the settings: the topic, the sink's group, window and queue sizes."""

    topic: str
    sink_group: str  #: whose committed offsets say what ClickHouse already holds
    recent_window_s: float
    recent_max_events: int
    queue_size: int
    heartbeat_s: float
    max_stream_s: float
    rerun_memory_jobs: int
    tail_fetch_bytes: int  #: per partition and fetch; the tail queues 16 fetches' worth

    @classmethod
    def from_settings(cls, settings: Settings) -> FanoutConfig:
        return cls(
            topic=settings.topic(topics.EVENTS),
            sink_group=settings.topic(topics.SINK_GROUP),
            recent_window_s=settings.sse_recent_window_s,
            recent_max_events=settings.sse_recent_max_events,
            queue_size=settings.sse_queue_size,
            heartbeat_s=settings.sse_heartbeat_s,
            max_stream_s=settings.sse_max_stream_s,
            rerun_memory_jobs=settings.sse_rerun_memory_jobs,
            tail_fetch_bytes=settings.sse_tail_fetch_bytes,
        )


class Fanout:
    """The gateway's Kafka tail, recent window and subscriptions (all touched on the event loop only)."""

    def __init__(
        self,
        kafka: KafkaConnection,
        config: FanoutConfig,
        observers: list[Callable[[JobEvent | WireEvent], None]] | None = None,
    ) -> None:
        self._config = config
        self._observers = observers or []
        self.topic = config.topic
        self._tail = KafkaTail(kafka, config.topic, self._dispatch, config.tail_fetch_bytes)
        self._offsets = TopicOffsets(kafka, config.topic, config.sink_group)
        self._window = RecentWindow(config.recent_window_s, config.recent_max_events)
        self._subs = Subscriptions(
            queue_size=config.queue_size, heartbeat_s=config.heartbeat_s, max_stream_s=config.max_stream_s
        )
        self.partitions = 0
        self.next_offsets: list[int] = []  # per partition: the next offset the tail will dispatch
        self.start_low: list[int] = []  # per partition: the topic's first offset when we started
        # What each job's streams have been shown (a re-run is hidden), for the jobs seen last.
        self._visibility = Visibility(config.rerun_memory_jobs)
        self.hidden = 0  #: events not shown: a re-run's, or anything after a job's terminal event
        self._advanced = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life ---------------------------------------------------------------------------
    def start(self) -> Fanout:
        self._loop = asyncio.get_running_loop()
        self.start_low, starts = self._tail.seek(self._config.recent_window_s)
        self.partitions = self._offsets.partitions = len(starts)
        self.next_offsets = list(starts)
        self._window.start = list(starts)
        self._tail.start(parse_model=bool(self._observers))
        self._subs.start()
        logger.info("SSE fanout tailing %s from %s", self.topic, positions.encode(starts))
        return self

    def stop(self) -> None:
        """Stop the tail (from any thread); streams still open end with reason ``shutdown``."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._subs.close_all, CloseReason.SHUTDOWN)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._tail.stop()
        self._offsets.close()

    # --- subscriptions ------------------------------------------------------------------
    def subscribe_job(self, job_id: str) -> tuple[Subscription, list[Entry], list[int]]:
        """Subscribe to one job; returns the subscription, the job's events in the window, and the
        window start per partition — taken in the same instant, so window + queue miss nothing."""
        return self._subs.job(job_id), self._window.job(job_id), list(self._window.start)

    def job_window(self, job_id: str) -> list[Entry]:
        return self._window.job(job_id)

    def subscribe_tenant(self, tenant: str, accepts: Callable[[Entry], bool] | None) -> Subscription:
        return self._subs.tenant(tenant, accepts)

    def tenant_window(self, tenant: str, accepts: Callable[[Entry], bool], since: list[int]) -> list[Entry]:
        """The tenant's accepted events in the window at or after ``since`` (per partition), in arrival order."""
        return self._window.tenant(tenant, accepts, since)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    @property
    def overflows(self) -> int:
        """Subscribers dropped because their queue was full."""
        return self._subs.overflows

    @property
    def window_size(self) -> int:
        return len(self._window)

    @property
    def window_start(self) -> list[int]:
        """Per partition: the window holds every record from here on."""
        return self._window.start

    # --- where the tail is ----------------------------------------------------------------
    def position(self) -> list[int]:
        return list(self.next_offsets)

    async def wait_caught_up(self, timeout_s: float) -> bool:
        """Wait until the tail has dispatched everything that was in the topic when called."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        try:
            high = [h for _, h in await self.watermarks(fresh=True)]
        except Exception:  # noqa: BLE001 - no answer from Kafka: we cannot be sure, say so
            logger.warning("could not read the watermarks of %s", self.topic, exc_info=True)
            return False
        while any(n < h for n, h in zip(self.next_offsets, high, strict=False)):
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            self._advanced.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._advanced.wait()
            except TimeoutError:
                return False
        return True

    async def sink_committed(self) -> list[int]:
        """The sink's committed offset per partition (-1 if none): ClickHouse holds every record below it."""
        return await self._offsets.sink_committed()

    async def watermarks(self, fresh: bool = False) -> list[tuple[int, int]]:
        """(low, high) per partition of ``jobs.events``."""
        return await self._offsets.watermarks(fresh)

    # --- dispatch (on the loop) -------------------------------------------------------------
    def _dispatch(self, entries: list[Entry], last_offsets: dict[int, int]) -> None:
        self._dispatch_entries(entries)
        for partition, offset in last_offsets.items():  # records we skipped still count as passed
            if offset + 1 > self.next_offsets[partition]:
                self.next_offsets[partition] = offset + 1
        self._window.evict()
        self._advanced.set()

    def _dispatch_entries(self, entries: Iterable[Entry]) -> None:
        now = time.monotonic()
        window, subs, next_offsets = self._window, self._subs, self.next_offsets
        for entry in entries:
            next_offsets[entry.partition] = entry.offset + 1
            # A record the job already has (a resent chunk, a re-run's terminal seq): drop it while
            # the original is in the window (per-job streams also drop seqs already sent).
            if window.repeats(entry):
                continue
            if not self._visibility.admit(entry):  # a re-run moving the job back (see visibility)
                self.hidden += 1
                continue
            window.add(entry, now)
            subs.offer(entry, next_offsets)
            if entry.event is not None:
                for observe in self._observers:
                    try:
                        observe(entry.event)
                    except Exception:  # noqa: BLE001 - an observer must not stop the fan-out
                        logger.exception("fanout observer failed")
        subs.drop_overflowed()
