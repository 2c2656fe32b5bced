"""One Kafka tail per gateway process, fanned out in memory to every SSE subscriber.

A consumer thread reads ``jobs.events`` (assigned partitions, no consumer group:
every gateway sees every event, several run side by side) and hands each batch
to the event loop, waiting until it was dispatched, so a busy loop slows the
tail instead of piling up callbacks. The loop puts each event on the bounded
queue of every subscriber of its job (per-job streams) or of its tenant
(multi-job streams, filtered). A subscriber whose queue is full is closed with
reason ``slow_client`` and dropped; nobody else waits for it.

The fanout also keeps a short **recent window** of events in memory
(``JOBSTREAM_SSE_RECENT_WINDOW_S``, at most ``JOBSTREAM_SSE_RECENT_MAX_EVENTS``,
as plain tuples the garbage collector does not track), and at start-up
positions its tail at ``now - window`` so the window is full at once. A stream's history is ClickHouse ∪ this window: the window covers every
record of partition ``p`` from offset ``window_start[p]`` on, ClickHouse every
record below the sink's committed offset, so the union is gap-free whenever
the sink is less than a window behind — which ``streams`` checks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any, Callable, Iterable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from sse_gateway import positions
from sse_gateway.visibility import Visibility
from streams import topics, wire
from streams.events import TERMINAL_EVENTS, JobEvent
from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)

CONSUME_BATCH = 500
_TERMINAL = frozenset(t.value for t in TERMINAL_EVENTS)


class Entry:
    """One event of ``jobs.events`` with its Kafka position and its SSE frames, built once for all clients."""

    __slots__ = ("partition", "offset", "timestamp_ms", "job_id", "tenant", "seq", "type", "kind", "raw",
                 "event", "position", "_job_frame", "_tenant_frame")

    def __init__(self, partition: int, offset: int, timestamp_ms: int, job_id: str, tenant: str, seq: int,
                 type_: str, kind: str, raw: bytes, event: JobEvent | None = None) -> None:
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

    @classmethod
    def from_kafka(cls, partition: int, offset: int, timestamp_ms: int, value: bytes, parse_model: bool) -> "Entry":
        """Raises ValueError for a record that is not a job event."""
        e = wire.decode_event(value)  # e.raw is one line, as an SSE data line must be
        return cls(partition, offset, timestamp_ms, e.job_id, e.tenant, e.seq, e.type.value, e.kind, e.raw,
                   e.model() if parse_model else None)

    @classmethod
    def from_event(cls, event: JobEvent, partition: int, offset: int) -> "Entry":
        return cls(partition, offset, int(event.ts.timestamp() * 1000), event.job_id, event.tenant, event.seq,
                   event.type.value, event.kind, wire.dumps(event), event)

    def row(self, received: float) -> tuple:
        """The compact form kept in the recent window: a tuple of atomic values, which CPython's
        collector stops tracking — tens of thousands of window objects would otherwise make every
        full collection pause the loop for hundreds of milliseconds."""
        return (self.partition, self.offset, self.timestamp_ms, self.job_id, self.tenant, self.seq, self.type,
                self.kind, self.raw, received)

    @classmethod
    def from_row(cls, row: tuple) -> "Entry":
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
                positions.encode(position).encode(), self.type.encode(), self.raw)
        if self._tenant_frame is None:
            self._tenant_frame = b"id: %s\nevent: %s\ndata: %s\n\n" % (
                positions.encode(self.position or ()).encode(), self.type.encode(), self.raw)
        return self._tenant_frame


class Subscription:
    """A client's bounded queue. ``close(reason)`` wakes its reader; ``reason`` says why.

    Waiting costs no timer: the fanout's ticker wakes a subscription that has waited a heartbeat
    interval (``beat``) or outlived its deadline (closed as ``max_lifetime``) — one timer for all
    clients instead of one per wait, which at thousands of clients is most of the CPU.
    """

    __slots__ = ("key", "accepts", "maxsize", "items", "closed", "reason", "beat", "deadline", "waiting_since",
                 "_waiter")

    def __init__(self, key: str, maxsize: int, accepts: Callable[[Entry], bool] | None = None,
                 deadline: float = float("inf")) -> None:
        self.key = key
        self.accepts = accepts
        self.maxsize = maxsize
        self.items: deque[Entry] = deque()
        self.closed = False
        self.reason: str | None = None
        self.beat = False  # a heartbeat is due
        self.deadline = deadline  # loop time at which the stream ends (max lifetime)
        self.waiting_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    def push(self, entry: Entry) -> bool:
        """Queue an event; False when the queue just overflowed (and is now closed as ``slow_client``)."""
        if self.closed:
            return True  # already on its way out; nothing more to do
        if len(self.items) >= self.maxsize:
            self.close("slow_client")
            return False
        self.items.append(entry)
        self._wake()
        return True

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if reason == "slow_client":
            self.items.clear()  # the client resumes by Last-Event-ID; free the memory now
        self._wake()

    def tick(self, now: float, heartbeat_s: float) -> None:
        """Called by the fanout's ticker: a heartbeat when idle that long, the end at the deadline."""
        if now >= self.deadline:
            self.close("max_lifetime")
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


class Fanout:
    """The gateway's Kafka tail, recent window and subscriptions (all touched on the event loop only)."""

    def __init__(self, bootstrap: str, settings: Settings,
                 observers: list[Callable[[JobEvent], None]] | None = None) -> None:
        self._settings = settings
        self._observers = observers or []
        self.topic = settings.topic(topics.EVENTS)
        self._consumer = Consumer(consumer_config(bootstrap, "jobstream-sse-gateway", settings,
                                                  **{"enable.partition.eof": False, "fetch.wait.max.ms": 100}))
        # Reads the sink's committed offsets and the topic's watermarks; never joins a group.
        self._offsets = Consumer(consumer_config(bootstrap, settings.topic(topics.SINK_GROUP), settings))
        self._offsets_lock = threading.Lock()
        self._offsets_cache: dict[str, tuple[float, list[Any]]] = {}
        self._job_subs: dict[str, set[Subscription]] = {}
        self._tenant_subs: dict[str, set[Subscription]] = {}
        self._window: deque[tuple] = deque()  # Entry.row()s, oldest first
        self._by_job: dict[str, deque[tuple]] = {}
        self.partitions = 0
        self.next_offsets: list[int] = []  # per partition: the next offset the tail will dispatch
        self.window_start: list[int] = []  # per partition: the window holds every record from here on
        self.start_low: list[int] = []  # per partition: the topic's first offset when we started
        self.overflows = 0
        # What each job's streams have been shown (a re-run is hidden), for the jobs seen last.
        self._visibility = Visibility(settings.sse_rerun_memory_jobs)
        self.hidden = 0  #: events not shown: a re-run's, or anything after a job's terminal event
        self._advanced = asyncio.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-fanout", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None

    # --- life ---------------------------------------------------------------------------
    def start(self) -> "Fanout":
        self._loop = asyncio.get_running_loop()
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        self.partitions = len(metadata.topics[self.topic].partitions)
        since_ms = int((time.time() - self._settings.sse_recent_window_s) * 1000)
        wanted = [TopicPartition(self.topic, p, since_ms) for p in range(self.partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=10)
        starts = []
        for tp in found:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
            self.start_low.append(low)
            starts.append(high if tp.offset < 0 or self._settings.sse_recent_window_s == 0 else tp.offset)
        self.next_offsets = list(starts)
        self.window_start = list(starts)
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in enumerate(starts)])
        self._thread.start()
        self._ticker = self._loop.create_task(self._tick())
        logger.info("SSE fanout tailing %s from %s", self.topic, positions.encode(starts))
        return self

    async def _tick(self) -> None:
        """Heartbeats and lifetimes of every subscription, on one timer."""
        s = self._settings
        period = max(0.05, min(1.0, s.sse_heartbeat_s / 4, s.sse_max_stream_s / 4))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for table in (self._job_subs, self._tenant_subs):
                for subs in list(table.values()):
                    for sub in list(subs):
                        sub.tick(now, s.sse_heartbeat_s)

    def stop(self) -> None:
        """Stop the tail (from any thread); streams still open end with reason ``shutdown``."""
        if self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._close_all)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()
        self._offsets.close()

    def _close_all(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for subs in [*self._job_subs.values(), *self._tenant_subs.values()]:
            for sub in list(subs):
                sub.close("shutdown")

    # --- subscriptions ------------------------------------------------------------------
    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._settings.sse_max_stream_s

    def subscribe_job(self, job_id: str) -> tuple[Subscription, list[Entry], list[int]]:
        """Subscribe to one job; returns the subscription, the job's events in the window, and the
        window start per partition — taken in the same instant, so window + queue miss nothing."""
        sub = Subscription(job_id, self._settings.sse_queue_size, deadline=self._deadline())
        self._job_subs.setdefault(job_id, set()).add(sub)
        return sub, self.job_window(job_id), list(self.window_start)

    def job_window(self, job_id: str) -> list[Entry]:
        return [Entry.from_row(row) for row in self._by_job.get(job_id, ())]

    def subscribe_tenant(self, tenant: str, accepts: Callable[[Entry], bool]) -> Subscription:
        sub = Subscription(tenant, self._settings.sse_queue_size, accepts, deadline=self._deadline())
        self._tenant_subs.setdefault(tenant, set()).add(sub)
        return sub

    def tenant_window(self, tenant: str, accepts: Callable[[Entry], bool], since: list[int]) -> list[Entry]:
        """The tenant's accepted events in the window at or after ``since`` (per partition), in arrival order."""
        found = (Entry.from_row(row) for row in self._window if row[4] == tenant and row[1] >= since[row[0]])
        return [e for e in found if accepts(e)]

    def unsubscribe(self, sub: Subscription) -> None:
        for table in (self._job_subs, self._tenant_subs):
            subs = table.get(sub.key)
            if subs is not None and sub in subs:
                subs.discard(sub)
                if not subs:
                    del table[sub.key]

    @property
    def subscribers(self) -> int:
        return sum(map(len, self._job_subs.values())) + sum(map(len, self._tenant_subs.values()))

    @property
    def window_size(self) -> int:
        return len(self._window)

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
        while any(n < h for n, h in zip(self.next_offsets, high)):
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
        return await asyncio.to_thread(self._cached, "committed", 0.2, self._read_committed)

    async def watermarks(self, fresh: bool = False) -> list[tuple[int, int]]:
        """(low, high) per partition of ``jobs.events``."""
        return await asyncio.to_thread(self._cached, "watermarks", 0.0 if fresh else 0.5, self._read_watermarks)

    def _cached(self, name: str, ttl_s: float, read: Callable[[], list[Any]]) -> list[Any]:
        with self._offsets_lock:  # one reader at a time; a burst of reconnects shares one answer
            now = time.monotonic()
            hit = self._offsets_cache.get(name)
            if hit is not None and now - hit[0] < ttl_s:
                return hit[1]
            value = read()
            self._offsets_cache[name] = (time.monotonic(), value)
            return value

    def _read_committed(self) -> list[int]:
        tps = self._offsets.committed([TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=10)
        return [tp.offset if tp.offset >= 0 and tp.error is None else -1 for tp in sorted(tps, key=lambda t: t.partition)]

    def _read_watermarks(self) -> list[tuple[int, int]]:
        return [self._offsets.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)
                for p in range(self.partitions)]

    # --- the tail -------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._loop is not None
        parse_model = bool(self._observers)
        while not self._stop.is_set():
            # consume(n, timeout) waits for n messages or the timeout: take what is there now, else
            # wait for one and take what came with it — so latency is not the timeout
            messages = self._consumer.consume(CONSUME_BATCH, timeout=0)
            if not messages:
                messages = self._consumer.consume(1, timeout=0.2)
                if messages:
                    messages += self._consumer.consume(CONSUME_BATCH - 1, timeout=0)
            entries = []
            for message in messages:
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        logger.warning("fanout consumer error: %s", message.error())
                    continue
                try:
                    entries.append(Entry.from_kafka(message.partition(), message.offset(), message.timestamp()[1],
                                                    message.value(), parse_model))
                except ValueError as exc:
                    logger.error("skipping record %s[%d]@%d: %s", self.topic, message.partition(),
                                 message.offset(), exc)
            last_offsets = messages_positions(messages)
            if not last_offsets:
                continue
            done = threading.Event()
            try:
                self._loop.call_soon_threadsafe(self._dispatch, entries, last_offsets, done)
            except RuntimeError:  # the loop is closed: we are shutting down
                return
            while not done.wait(0.5):
                if self._stop.is_set() or self._loop.is_closed():
                    return

    def _dispatch(self, entries: list[Entry], last_offsets: dict[int, int], done: threading.Event) -> None:
        try:
            self._dispatch_entries(entries)
            for partition, offset in last_offsets.items():  # records we skipped still count as passed
                if offset + 1 > self.next_offsets[partition]:
                    self.next_offsets[partition] = offset + 1
            self._evict()
            self._advanced.set()
        finally:
            done.set()

    def _dispatch_entries(self, entries: Iterable[Entry]) -> None:
        now = time.monotonic()
        window_on = self._settings.sse_recent_max_events > 0 and self._settings.sse_recent_window_s > 0
        dead: list[Subscription] = []
        for entry in entries:
            self.next_offsets[entry.partition] = entry.offset + 1
            # A record the job already has (a resent chunk, a re-run's terminal seq): drop it while
            # the original is in the window (per-job streams also drop seqs already sent). Only the
            # same seq: a lower one is news, e.g. the API's `queued` landing after the worker's
            # `running` (two producers); dropping it left the window without the job's start.
            recent = self._by_job.get(entry.job_id)
            if recent and any(row[5] == entry.seq for row in recent):
                continue
            if not self._visibility.admit(entry):  # a re-run moving the job back (see visibility)
                self.hidden += 1
                continue
            if window_on:
                row = entry.row(now)
                self._window.append(row)
                self._by_job.setdefault(entry.job_id, deque()).append(row)
            else:
                self.window_start[entry.partition] = entry.offset + 1
            subs = self._job_subs.get(entry.job_id)
            if subs:
                for sub in subs:
                    if not sub.push(entry):
                        dead.append(sub)
            subs = self._tenant_subs.get(entry.tenant)
            if subs:
                entry.position = tuple(self.next_offsets)
                for sub in subs:
                    if sub.accepts is None or sub.accepts(entry):
                        if not sub.push(entry):
                            dead.append(sub)
            if entry.event is not None:
                for observe in self._observers:
                    try:
                        observe(entry.event)
                    except Exception:  # noqa: BLE001 - an observer must not stop the fan-out
                        logger.exception("fanout observer failed")
        for sub in dead:
            if sub.reason == "slow_client":
                self.overflows += 1
                logger.info("dropped a slow SSE client (queue of %d full)", sub.maxsize, extra={"key": sub.key})
            self.unsubscribe(sub)

    def _evict(self) -> None:
        oldest = time.monotonic() - self._settings.sse_recent_window_s
        limit = self._settings.sse_recent_max_events
        window = self._window
        while window and (len(window) > limit or window[0][9] < oldest):
            partition, offset, _, job_id = window.popleft()[:4]
            self.window_start[partition] = max(self.window_start[partition], offset + 1)
            per_job = self._by_job.get(job_id)
            if per_job:
                per_job.popleft()
                if not per_job:
                    del self._by_job[job_id]


def messages_positions(messages: list) -> dict[int, int]:
    """The last offset seen per partition in a batch (decodable or not)."""
    last: dict[int, int] = {}
    for message in messages:
        if not message.error():
            last[message.partition()] = message.offset()
    return last
