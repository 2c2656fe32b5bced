"""Kafka ``jobs.events`` → ClickHouse, in batches, offsets committed only after the insert.

Exactly-once rows from at-least-once delivery. A batch is the messages in hand
across this sink's partitions, cut by size (``JOBSTREAM_SINK_BATCH_MAX_SIZE``)
or age (``JOBSTREAM_SINK_BATCH_MAX_WAIT_MS``); its identity is its exact offset
ranges, e.g. ``0:100-199,3:50-80``. For each batch the sink

1. commits every partition's *current* offset again, with the ranges as the
   commit's metadata (the intent; the committed offset itself does not move);
2. inserts the batch into ``job_events`` — one insert, with an
   ``insert_deduplication_token`` derived from the ranges; materialized views
   fill ``job_outcomes_store`` (behind ``job_outcomes``/``job_results``), the job
   state and ``replay_jobs``;
3. commits the offsets after the batch, clearing the intent.

A sink that dies between 1 and 3 leaves the intent behind. Whoever gets the
partition next (this sink restarted, or another one) reads it, re-reads exactly
those ranges from Kafka and inserts them again with the same token: ClickHouse
drops the blocks it already has and writes the ones it lacks — the table and
each materialized view alike (``deduplicate_blocks_in_dependent_materialized_views``)
— so no row is lost or doubled, even when the crash came half-way through the
insert. Redelivered batches are never re-cut differently, which is what makes a
deterministic token sufficient.

ClickHouse unreachable: the insert is retried with capped exponential backoff
for as long as it takes; meanwhile the consumer's partitions are paused and it
keeps polling (so it stays in its group), lag grows, nothing is committed, and
it catches up when ClickHouse returns. Records below the committed offset are
always in ClickHouse (the SSE gateway relies on it).
"""

from __future__ import annotations

import hashlib
import logging
import random
import socket
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from store.clickhouse import ClickHouseStore
from streams import topics, wire
from streams.events import TERMINAL_EVENTS, EventType
from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)

GROUP_ID = topics.SINK_GROUP  # one name: the gateway reads this group's offsets too
INTENT_PREFIX = "jobstream-sink/1 "
MAX_PARTITIONS_PER_BATCH = 128  # keeps the intent under Kafka's offset.metadata.max.bytes (4096)
_REPLAY_TIMEOUT_S = 60.0

# Broker answers worth waiting out (librdkafka does not always flag them retriable).
_TRANSIENT = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD,
    KafkaError._ALL_BROKERS_DOWN,
})

JobKey = tuple[str, str]  # (tenant, job_id)
Times = tuple[datetime | None, datetime | None]  # (submitted_at, started_at)


class SinkStopping(Exception):
    """The sink was asked to stop with a batch unwritten; it will be redelivered."""


@dataclass(frozen=True)
class Ranges:
    """A batch's identity: per partition, the first and last offset it holds."""

    spans: tuple[tuple[int, int, int], ...]  # (partition, first, last), by partition

    @classmethod
    def of(cls, messages: Iterable[Message]) -> "Ranges":
        bounds: dict[int, list[int]] = {}
        for message in messages:
            span = bounds.setdefault(message.partition(), [message.offset(), message.offset()])
            span[0], span[1] = min(span[0], message.offset()), max(span[1], message.offset())
        return cls(tuple((p, a, b) for p, (a, b) in sorted(bounds.items())))

    def describe(self) -> str:
        return ",".join(f"{p}:{a}-{b}" for p, a, b in self.spans)

    @classmethod
    def parse(cls, text: str) -> "Ranges | None":
        try:
            spans = []
            for item in text.split(","):
                p, _, span = item.partition(":")
                a, _, b = span.partition("-")
                spans.append((int(p), int(a), int(b)))
            return cls(tuple(sorted(spans)))
        except ValueError:
            return None

    def token(self, topic: str) -> str:
        text = f"{topic}/{self.describe()}"
        return text if len(text) <= 200 else f"{topic}/sha256:{hashlib.sha256(text.encode()).hexdigest()}"

    def first(self, partition: int) -> int | None:
        return next((a for p, a, _ in self.spans if p == partition), None)


@dataclass
class SinkStats:
    """What the sink has done, for status pages, tests and the bench."""

    events_written: int = 0  #: event rows inserted (redelivered ones dropped by ClickHouse included)
    batches_written: int = 0
    batches_replayed: int = 0  #: intents found after a crash or rebalance and written again
    insert_failures: int = 0  #: failed insert attempts (each retried)
    undecodable: int = 0  #: messages skipped because they are not JobEvents
    retrying: bool = False  #: ClickHouse is failing right now
    last_error: str | None = None
    last_write_at: float | None = None  #: time.time() of the last successful write


class JobTimes:
    """Submit and start times of jobs in flight, so an outcome's durations need no query.

    Bounded: past ``capacity`` the oldest jobs are forgotten (their outcomes then
    look the times up in ``jobs_state``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._times: dict[JobKey, list[datetime | None]] = {}

    def queued(self, key: JobKey, ts: datetime) -> None:
        if self.capacity:
            self._entry(key)[0] = ts

    def running(self, key: JobKey, ts: datetime) -> None:
        if self.capacity:
            entry = self._entry(key)
            if entry[1] is None or ts < entry[1]:
                entry[1] = ts

    def pop(self, key: JobKey) -> Times | None:
        entry = self._times.pop(key, None)
        return (entry[0], entry[1]) if entry is not None else None

    def __len__(self) -> int:
        return len(self._times)

    def _entry(self, key: JobKey) -> list[datetime | None]:
        entry = self._times.get(key)
        if entry is None:
            if len(self._times) >= self.capacity:
                del self._times[next(iter(self._times))]
            entry = self._times[key] = [None, None]
        return entry


@dataclass
class BatchRows:
    """One batch as JSONEachRow lines for ``job_events``; terminal events wait for their job's times.

    A well-formed event travels as Kafka delivered it (ClickHouse parses it), with
    its Kafka position prepended; anything else is normalised through ``JobEvent``.
    Terminal events also carry ``submitted_at``/``started_at``: the materialized
    views turn them into ``job_results`` and ``job_outcomes`` rows in the same insert.
    """

    lines: list[bytes] = field(default_factory=list)
    terminals: list[tuple[int, JobKey, Times | None, bytes]] = field(default_factory=list)  # (line, job, seen, tail)

    def missing_times(self) -> list[JobKey]:
        """Jobs whose submit or start this sink did not see (before a restart, or evicted): look them up."""
        return sorted({key for _, key, times, _ in self.terminals if times is None or None in times})

    def body(self, looked_up: dict[JobKey, Times]) -> bytes:
        """The insert: every line, terminal ones stamped with the best times known."""
        lines = list(self.lines)
        for index, key, seen, tail in self.terminals:
            seen_submitted, seen_started = seen or (None, None)
            found_submitted, found_started = looked_up.get(key, (None, None))
            lines[index] = b'{"submitted_at":%s,"started_at":%s,%s' % (
                _json_time(seen_submitted or found_submitted), _json_time(seen_started or found_started), tail)
        return b"\n".join(lines)


def build_rows(messages: list[Message], times: JobTimes, on_undecodable: Callable[[Message], None]) -> BatchRows:
    """Decode a batch (in partition, offset order) into lines; undecodable messages are skipped.

    A ``queued`` event can reach Kafka after its job finished (the API and the
    processors are different producers): that outcome then has no queue wait or
    end-to-end time (the ``jobs`` view, folded on read, still has them).
    """
    rows = BatchRows()
    for message in messages:
        try:
            event = wire.decode_event(message.value())
        except ValueError:
            on_undecodable(message)
            continue
        type_, tenant, job_id, ts = event.type, event.tenant, event.job_id, event.ts
        line = b'"kafka_partition":%d,"kafka_offset":%d,%s' % (message.partition(), message.offset(), event.raw[1:])
        if type_ is EventType.QUEUED:
            times.queued((tenant, job_id), ts)
        elif type_ is EventType.RUNNING:
            times.running((tenant, job_id), ts)
        elif type_ in TERMINAL_EVENTS:
            rows.terminals.append((len(rows.lines), (tenant, job_id), times.pop((tenant, job_id)), line))
        rows.lines.append(b"{" + line)
    return rows


def _json_time(ts: datetime | None) -> bytes:
    return orjson.dumps(ts) if ts is not None else b"null"


class Sink:
    """Runs on its own thread; ``stop()`` writes and commits the batch in hand (if ClickHouse answers).

    Two threads, one batch in flight: while a batch's insert runs (chDB and the
    HTTP client release the GIL), the sink thread reads and decodes the next one.
    Commits stay strictly in order: the next intent is committed only after the
    previous insert finished and its offsets were committed.
    """

    def __init__(self, bootstrap: str, store: ClickHouseStore, settings: Settings,
                 consumer_overrides: dict[str, Any] | None = None) -> None:
        self._bootstrap = bootstrap
        self._store = store
        self._settings = settings
        self._topic = settings.topic(topics.EVENTS)
        self._group = settings.topic(GROUP_ID)
        membership = {"group.instance.id": member} if (member := instance_id(settings)) else {}
        self._consumer = Consumer(consumer_config(bootstrap, self._group, settings,
                                                  **{**membership, **(consumer_overrides or {})}))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clickhouse-sink", daemon=True)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert")
        self._inflight: tuple[Ranges, list[Message], Future[int]] | None = None
        self._times = JobTimes(settings.sink_job_times_cache)
        self._inbox: list[Message] = []  # consumed, not yet checked against assignment and replays
        self._pending: list[Message] = []  # the next batch, in arrival order
        self._pending_since: float | None = None
        self._assigned: set[int] = set()
        self._unchecked: set[int] = set()  # assigned, intent not yet read
        self._written: dict[int, int] = {}  # per partition: the last offset known to be in ClickHouse
        self.stats = SinkStats()

    # --- life -------------------------------------------------------------------------------
    def start(self) -> "Sink":
        self._store.apply_events_ttl(self._settings.events_ttl_days)
        self._consumer.subscribe([self._topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self._writer.shutdown(wait=True)
        self._consumer.close()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except SinkStopping:
                break
            except Exception:  # never let the thread die silently: drop the batch, re-read it, go on
                logger.exception("sink round failed; re-reading the batch in hand")
                self._rewind(self._pending + self._inbox)
                self._stop.wait(1.0)
        try:
            self._settle()
            if self._pending or self._inbox:
                self._admit()
                while self._pending:
                    self._flush()
                self._settle()
        except SinkStopping:
            logger.warning("sink stopped with %d events unwritten; they will be redelivered", len(self._pending))
        except Exception:
            logger.exception("sink could not write its last batch; it will be redelivered")

    def _round(self) -> None:
        self._inbox.extend(self._consumer.consume(self._settings.sink_batch_max_size, timeout=self._poll_timeout()))
        self._admit()
        if self._inflight is not None and self._inflight[2].done():
            self._settle()  # commit promptly: the gateway reads the sink's committed offsets
        if self._due():
            self._flush()

    def _poll_timeout(self) -> float:
        wait_s = self._settings.sink_batch_max_wait_ms / 1000
        timeout = min(wait_s, 0.5)
        if self._pending_since is not None:
            timeout = max(0.001, self._pending_since + wait_s - time.monotonic())
        return min(timeout, 0.01) if self._inflight is not None else timeout

    # --- assignment ---------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions}
        self._assigned |= new
        self._unchecked |= new
        logger.info("sink assigned partitions %s", sorted(new))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {tp.partition for tp in partitions}
        self._assigned -= gone
        self._unchecked -= gone
        for p in gone:
            self._written.pop(p, None)
        self._inbox = [m for m in self._inbox if m.partition() not in gone]
        self._pending = [m for m in self._pending if m.partition() not in gone]
        if not self._pending:
            self._pending_since = None
        logger.info("sink revoked partitions %s", sorted(gone))

    def _admit(self) -> None:
        """Move consumed messages to the batch, after any intents of new partitions were replayed."""
        if self._unchecked:
            self._replay_intents()
        inbox, self._inbox = self._inbox, []
        for message in inbox:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._FATAL:  # e.g. fenced: another sink joined with our instance id
                    logger.error("sink consumer failed for good, the sink stops: %s; does another sink share "
                                 "JOBSTREAM_SINK_INSTANCE_ID %r?", error, instance_id(self._settings))
                    self._stop.set()
                elif error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("sink consumer error: %s", error)
                continue
            partition = message.partition()
            if partition not in self._assigned or message.offset() <= self._written.get(partition, -1):
                continue  # not ours any more, or already written (a replay, or a re-read after an error)
            self._pending.append(message)
        if self._pending and self._pending_since is None:
            self._pending_since = time.monotonic()

    # --- batches -----------------------------------------------------------------------------
    def _due(self) -> bool:
        if not self._pending:
            return False
        if len(self._pending) >= self._settings.sink_batch_max_size:
            return True
        return time.monotonic() - (self._pending_since or 0) >= self._settings.sink_batch_max_wait_ms / 1000

    def _flush(self) -> None:
        """Decode the next batch (while the previous insert runs), then record its intent and start its insert."""
        batch = self._take_batch()
        if not batch:
            return
        ranges = Ranges.of(batch)
        try:
            rows = build_rows(batch, self._times, self._undecodable)
            self._settle()
            if not self._commit(ranges, intent=True):
                logger.warning("sink could not record its intent for %s; reading it again", ranges.describe())
                self._rewind(batch)
                return
        except BaseException:
            self._rewind(batch)
            raise
        self._inflight = (ranges, batch, self._writer.submit(self._insert, ranges, rows))

    def _settle(self) -> None:
        """Wait for the insert in flight, then commit its offsets.

        A slow insert is just waited for; a failing one (ClickHouse down, being
        retried) is waited for with partitions paused and the consumer polled, so
        the sink stays in its group while its lag grows.
        """
        if self._inflight is None:
            return
        ranges, batch, future = self._inflight
        paused = False
        while True:
            try:
                future.result(timeout=0.5)
                break
            except FuturesTimeout:
                if self.stats.retrying:
                    self._pause()
                    paused = True
                    self._inbox.extend(self._consumer.consume(100, timeout=0.5))
            except BaseException:
                self._inflight = None
                self._rewind(batch)
                raise
        self._inflight = None
        if paused:
            self._consumer.resume(self._consumer.assignment())
        for p, _, last in ranges.spans:
            if p in self._assigned:
                self._written[p] = max(self._written.get(p, -1), last)
        self._commit(ranges, intent=False)

    def _take_batch(self) -> list[Message]:
        """At most max_size messages, a prefix of each partition's, in (partition, offset) order."""
        size = self._settings.sink_batch_max_size
        batch: list[Message] = []
        rest: list[Message] = []
        chosen: set[int] = set()
        cut: set[int] = set()
        for message in self._pending:
            p = message.partition()
            if p not in cut and len(batch) < size and (p in chosen or len(chosen) < MAX_PARTITIONS_PER_BATCH):
                chosen.add(p)
                batch.append(message)
            else:
                cut.add(p)
                rest.append(message)
        self._pending = rest
        self._pending_since = time.monotonic() if rest else None
        batch.sort(key=lambda m: (m.partition(), m.offset()))
        return batch

    def _insert(self, ranges: Ranges, rows: BatchRows) -> int:
        """On the writer thread: insert a batch, retrying with backoff until ClickHouse takes it."""
        token = ranges.token(self._topic)
        attempt = 0
        while True:
            try:
                looked_up = self._store.job_times(rows.missing_times())
                self._store.insert_json("job_events", rows.body(looked_up), token)
                break
            except Exception as exc:
                attempt += 1
                self.stats.insert_failures += 1
                self.stats.retrying = True
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if self._stop.is_set() and attempt >= 3:
                    raise SinkStopping() from exc
                delay = min(self._settings.sink_retry_max_s, 0.2 * 2 ** min(attempt - 1, 16))
                delay *= random.uniform(0.8, 1.2)
                logger.warning("ClickHouse insert failed (attempt %d, retry in %.1fs, %d events waiting): %s",
                               attempt, delay, len(rows.lines), self.stats.last_error)
                self._stop.wait(delay)
        if attempt:
            logger.info("ClickHouse insert succeeded after %d failed attempts", attempt)
        self.stats.retrying = False
        self.stats.events_written += len(rows.lines)
        self.stats.batches_written += 1
        self.stats.last_write_at = time.time()
        return len(rows.lines)

    def _pause(self) -> None:
        try:
            self._consumer.pause(self._consumer.assignment())
        except KafkaException as exc:
            logger.debug("pause failed: %s", exc)

    def _wait_paused(self, delay_s: float) -> None:
        """Sleep between Kafka retries while staying in the consumer group: partitions paused, polling on."""
        deadline = time.monotonic() + delay_s
        while not self._stop.is_set():
            self._pause()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._inbox.extend(self._consumer.consume(100, timeout=min(remaining, 0.5)))
        self._consumer.resume(self._consumer.assignment())

    def _commit(self, ranges: Ranges, *, intent: bool) -> bool:
        """Commit the intent (offsets unchanged, ranges as metadata) or the done batch (offsets after it).

        Only partitions still assigned are committed. Transient Kafka errors are
        retried; False when the partitions were lost (the new owner takes over).
        """
        metadata = INTENT_PREFIX + ranges.describe() if intent else ""
        offsets = [TopicPartition(self._topic, p, a if intent else b + 1, metadata=metadata)
                   for p, a, b in ranges.spans if p in self._assigned]
        if not offsets:
            return not intent
        attempt = 0
        while True:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
                return True
            except KafkaException as exc:
                attempt += 1
                if not transient(exc) or self._stop.is_set() or (not intent and attempt >= 5):
                    logger.warning("sink %s commit of %s failed: %s", "intent" if intent else "offset",
                                   ranges.describe(), exc)
                    return False
                self._wait_paused(min(self._settings.sink_retry_max_s, 0.1 * 2 ** attempt))

    def _rewind(self, messages: list[Message]) -> None:
        """Forget messages not written and seek back to them, so they are read again."""
        firsts: dict[int, int] = {}
        for message in messages:
            if message.error() is None:
                p = message.partition()
                firsts[p] = min(firsts.get(p, message.offset()), message.offset())
        self._pending = [m for m in self._pending if m.partition() not in firsts]
        self._inbox = [m for m in self._inbox if m.partition() not in firsts]
        self._pending_since = time.monotonic() if self._pending else None
        for p, offset in firsts.items():
            if p in self._assigned:
                try:
                    self._consumer.seek(TopicPartition(self._topic, p, offset))
                except KafkaException as exc:
                    logger.warning("sink could not seek partition %d back to %d: %s", p, offset, exc)

    # --- redelivery ---------------------------------------------------------------------------
    def _replay_intents(self) -> None:
        """Write again, exactly as cut before, every batch a previous owner began but did not finish."""
        self._settle()
        partitions = sorted(self._unchecked)
        committed = self._consumer.committed([TopicPartition(self._topic, p) for p in partitions], timeout=30)
        self._unchecked -= set(partitions)
        intents: dict[str, Ranges] = {}
        for tp in committed:
            if tp.offset >= 0 and tp.partition in self._assigned:
                self._written[tp.partition] = max(self._written.get(tp.partition, -1), tp.offset - 1)
            metadata = tp.metadata or ""
            if not metadata.startswith(INTENT_PREFIX):
                continue
            ranges = Ranges.parse(metadata.removeprefix(INTENT_PREFIX))
            if ranges is not None and ranges.first(tp.partition) == tp.offset:
                intents[ranges.describe()] = ranges
        for ranges in intents.values():
            logger.warning("sink replaying unfinished batch %s", ranges.describe())
            batch = self._read_exactly(ranges)
            rows = build_rows(batch, self._times, self._undecodable)
            self._inflight = (ranges, [], self._writer.submit(self._insert, ranges, rows))
            self._settle()
            self.stats.batches_replayed += 1

    def _read_exactly(self, ranges: Ranges) -> list[Message]:
        """The messages of ``ranges`` from Kafka, read by a consumer outside the group."""
        reader = Consumer(consumer_config(self._bootstrap, f"{self._group}.replay", self._settings,
                                          **{"enable.partition.eof": True}))
        wanted = {p: last for p, _, last in ranges.spans}
        got: dict[int, list[Message]] = {p: [] for p in wanted}
        try:
            reader.assign([TopicPartition(self._topic, p, first) for p, first, _ in ranges.spans])
            deadline = time.monotonic() + _REPLAY_TIMEOUT_S
            while wanted and time.monotonic() < deadline and not self._stop.is_set():
                for message in reader.consume(1000, timeout=0.5):
                    p = message.partition()
                    if message.error() is not None:
                        if message.error().code() == KafkaError._PARTITION_EOF and p in wanted:
                            logger.error("partition %d ends before offset %d; replaying what is left", p, wanted[p])
                            wanted.pop(p)
                        continue
                    if p in wanted and message.offset() <= wanted[p]:
                        got[p].append(message)
                        if message.offset() >= wanted[p]:
                            wanted.pop(p)
            if wanted:
                logger.error("could not re-read all of %s (missing partitions %s)", ranges.describe(), sorted(wanted))
        finally:
            reader.close()
        return [m for p in sorted(got) for m in got[p]]

    def _undecodable(self, message: Message) -> None:
        self.stats.undecodable += 1
        logger.error("skipping undecodable event at %s[%d]@%d", self._topic, message.partition(), message.offset())


def instance_id(settings: Settings) -> str | None:
    """The sink's static group membership id (``group.instance.id``); None: dynamic membership.

    A sink that restarts with the same id takes its partitions back at once, instead of waiting
    for the dead member's session to expire (45 s). ``JOBSTREAM_SINK_INSTANCE_ID`` if set (empty:
    dynamic); else derived from the host name and the data dir, which is stable across restarts
    of one installation and differs between hosts and installations.
    """
    if settings.sink_instance_id is not None:
        return settings.sink_instance_id.strip() or None
    host = socket.gethostname()
    place = hashlib.sha256(f"{host}\0{Path(settings.data_dir).resolve()}".encode()).hexdigest()[:12]
    return f"sink-{host[:64]}-{place}"


def group_lag(bootstrap: str, settings: Settings, timeout_s: float = 10.0) -> int:
    """Events on ``jobs.events`` not yet committed by the sink's group (all partitions).

    Retriable broker errors (a coordinator still loading, say) are retried until ``timeout_s``.
    """
    topic = settings.topic(topics.EVENTS)
    reader = Consumer(consumer_config(bootstrap, settings.topic(GROUP_ID), settings))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                metadata = reader.list_topics(topic, timeout=timeout_s)
                partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
                lag = 0
                for tp in reader.committed(partitions, timeout=timeout_s):
                    low, high = reader.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                    lag += high - (tp.offset if tp.offset >= 0 else low)
                return lag
            except KafkaException as exc:
                if not transient(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        reader.close()


def transient(exc: KafkaException) -> bool:
    """A Kafka error that goes away by waiting (coordinator moving or loading, timeouts)."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)
