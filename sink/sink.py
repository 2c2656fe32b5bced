"""The sink's loop: Kafka ``jobs.events`` → ClickHouse ``job_events``, exactly once.

Consumes, cuts batches (``batching``), makes rows (``rows``), brackets each insert with the
commit-intent protocol (``intents``) and commits offsets only after it. While ClickHouse is
unreachable the insert is retried with capped backoff, partitions are paused, nothing is
committed; records below the committed offset are always in ClickHouse (the SSE gateway
relies on it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any, NoReturn, Self

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import RetryCallState, Retrying, retry_if_exception, retry_if_exception_type, wait_exponential

from sink.batching import Pending
from sink.group import GROUP_ID, instance_id
from sink.intents import Ranges, commit_offsets, read_exactly, unfinished
from sink.rows import BatchRows, JobTimes, build_rows
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.errors import JobstreamError
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader, transient
from streams.settings import Settings
from telemetry import metrics, tracing

logger = logging.getLogger(__name__)


class SinkStopping(JobstreamError):
    """The sink was asked to stop with a batch unwritten; it will be redelivered."""


@dataclass(frozen=True)
class SinkConfig:
    """What the sink needs of the settings: its topic and group, batch cut, retry cap, TTL."""

    topic: str
    group_id: str
    instance_id: str | None  #: static group membership, so a restart does not rebalance
    batch_max_size: int
    batch_max_wait_s: float
    job_times_cache: int
    retry_max_s: float
    events_ttl_days: int

    @classmethod
    def from_settings(cls, settings: Settings) -> SinkConfig:
        return cls(
            topic=settings.topic(topics.EVENTS),
            group_id=settings.topic(GROUP_ID),
            instance_id=instance_id(settings),
            batch_max_size=settings.sink_batch_max_size,
            batch_max_wait_s=settings.sink_batch_max_wait_ms / 1000,
            job_times_cache=settings.sink_job_times_cache,
            retry_max_s=settings.sink_retry_max_s,
            events_ttl_days=settings.events_ttl_days,
        )


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


class Sink(KafkaReader):
    """Runs on its own thread; ``stop()`` writes and commits the batch in hand (if ClickHouse answers).

    Two threads, one batch in flight: while a batch's insert runs (chDB and the
    HTTP client release the GIL), the sink thread reads and decodes the next one.
    Commits stay strictly in order: the next intent is committed only after the
    previous insert finished and its offsets were committed.
    """

    def __init__(
        self,
        kafka: KafkaConnection,
        store: ClickHouseStore,
        config: SinkConfig,
        consumer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self._group = config.group_id
        membership = {"group.instance.id": config.instance_id} if config.instance_id else {}
        super().__init__(
            kafka,
            config.topic,
            group_id=self._group,
            name="clickhouse-sink",
            **{**membership, **(consumer_overrides or {})},
        )
        self._kafka = kafka
        self._store = store
        self._config = config
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-insert")
        self._inflight: tuple[Ranges, list[Message], Future[int]] | None = None
        self._times = JobTimes(config.job_times_cache)
        self._inbox: list[Message] = []  # consumed, not yet checked against assignment and replays
        self._pending = Pending(config.batch_max_size, config.batch_max_wait_s)
        self._assigned: set[int] = set()
        self._unchecked: set[int] = set()  # assigned, intent not yet read
        self._written: dict[int, int] = {}  # per partition: the last offset known to be in ClickHouse
        self.stats = SinkStats()

    # --- life (the loop itself is KafkaReader's) ----------------------------------------------
    def start(self) -> Self:
        self._store.apply_events_ttl(self._config.events_ttl_days)
        return super().start()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop consuming; the batch in hand is written and committed first (``finish``), on the sink's thread."""
        super().stop(timeout_s=timeout_s)
        self._writer.shutdown(wait=True)

    def attach(self) -> None:
        self.consumer.subscribe(
            [self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke
        )

    def round(self) -> None:
        self._inbox.extend(self.consumer.consume(self._config.batch_max_size, timeout=self._poll_timeout()))
        self._admit()
        if self._inflight is not None and self._inflight[2].done():
            self._settle()  # commit promptly: the gateway reads the sink's committed offsets
        if self._pending.due():
            self._flush()

    def round_failed(self, exc: Exception) -> None:
        """Stopping: end the loop. Else drop the batch in hand, re-read it, go on after a pause."""
        if isinstance(exc, SinkStopping):
            self._stop.set()
            return
        self._rewind(self._pending.messages + self._inbox)
        super().round_failed(exc)

    def finish(self) -> None:
        """Write and commit what is in hand before the consumer closes."""
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

    def _poll_timeout(self) -> float:
        timeout = self._pending.poll_timeout()
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
        self._pending.drop(gone)
        logger.info("sink revoked partitions %s", sorted(gone))

    def _admit(self) -> None:
        """Move consumed messages to the batch, after any intents of new partitions were replayed."""
        if self._unchecked:
            self._replay_intents()
        inbox, self._inbox = self._inbox, []
        admitted: list[Message] = []
        for message in inbox:
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._FATAL:  # e.g. fenced: another sink joined with our instance id
                    logger.error(
                        "sink consumer failed for good, the sink stops: %s; does another sink share "
                        "JOBSTREAM_SINK_INSTANCE_ID %r?",
                        error,
                        self._config.instance_id,
                    )
                    self._stop.set()
                elif error.code() != KafkaError._PARTITION_EOF:
                    logger.warning("sink consumer error: %s", error)
                continue
            partition = message.partition()
            if partition not in self._assigned or message.offset() <= self._written.get(partition, -1):
                continue  # not ours any more, or already written (a replay, or a re-read after an error)
            admitted.append(message)
        self._pending.extend(admitted)

    # --- batches -----------------------------------------------------------------------------
    def _flush(self) -> None:
        """Decode the next batch (while the previous insert runs), then record its intent and start its insert."""
        batch = self._pending.take()
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
        future = self._writer.submit(self._insert, ranges, rows, _oldest_s(batch))
        if tracing.enabled():  # a span per job trace in the batch, from now until the insert ends
            spans = tracing.consumed("jobstream.sink.insert", batch, {"jobstream.batch_size": len(batch)})
            if spans is not None:
                future.add_done_callback(lambda done: spans.end(_failure(done)))
        self._inflight = (ranges, batch, future)

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
                    self._inbox.extend(self.consumer.consume(100, timeout=0.5))
            except BaseException:
                self._inflight = None
                self._rewind(batch)
                raise
        self._inflight = None
        if paused:
            self.consumer.resume(self.consumer.assignment())
        for p, _, last in ranges.spans:
            if p in self._assigned:
                self._written[p] = max(self._written.get(p, -1), last)
        self._commit(ranges, intent=False)

    def _insert(self, ranges: Ranges, rows: BatchRows, appended_s: float | None = None) -> int:
        """On the writer thread: insert a batch, retrying with backoff until ClickHouse takes it
        (when stopping: three attempts, then ``SinkStopping``)."""
        token = ranges.token(self.topic)

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            self.stats.insert_failures += 1
            metrics.SINK_FAILURES.inc()
            self.stats.retrying = True
            self.stats.last_error = f"{type(exc).__name__}: {exc}"

        def waiting(state: RetryCallState) -> None:
            logger.warning(
                "ClickHouse insert failed (attempt %d, retry in %.1fs, %d events waiting): %s",
                state.attempt_number,
                state.upcoming_sleep,
                len(rows.lines),
                self.stats.last_error,
            )

        retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            stop=lambda state: self._stop.is_set() and state.attempt_number >= 3,
            wait=_jittered(wait_exponential(multiplier=0.2, max=self._config.retry_max_s)),
            sleep=self._wait,
            after=failed,
            before_sleep=waiting,
            retry_error_callback=_stopping,
        )
        for attempt in retrying:
            with attempt:
                started = time.perf_counter()
                looked_up = self._store.job_times(rows.missing_times())
                self._store.insert_json("job_events", rows.body(looked_up), token)
        metrics.SINK_INSERT_DURATION.observe(time.perf_counter() - started)
        metrics.SINK_ROWS.inc(len(rows.lines))
        if appended_s is not None:
            metrics.SINK_LAG.observe(max(0.0, time.time() - appended_s))
        if failures := attempt.retry_state.attempt_number - 1:
            logger.info("ClickHouse insert succeeded after %d failed attempts", failures)
        self.stats.retrying = False
        self.stats.events_written += len(rows.lines)
        self.stats.batches_written += 1
        self.stats.last_write_at = time.time()
        return len(rows.lines)

    def _wait(self, delay_s: float) -> None:
        """Sleep between insert retries; cut short by ``stop()``."""
        self._stop.wait(delay_s)

    def _pause(self) -> None:
        try:
            self.consumer.pause(self.consumer.assignment())
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
            self._inbox.extend(self.consumer.consume(100, timeout=min(remaining, 0.5)))
        self.consumer.resume(self.consumer.assignment())

    def _commit(self, ranges: Ranges, *, intent: bool) -> bool:
        """Commit the intent (offsets unchanged, ranges as metadata) or the done batch (offsets after it).

        Only partitions still assigned are committed. Transient Kafka errors are
        retried; False when the partitions were lost (the new owner takes over).
        """
        offsets = commit_offsets(self.topic, ranges, self._assigned, intent=intent)
        if not offsets:
            return not intent
        retrying = Retrying(
            retry=retry_if_exception(transient),
            stop=lambda state: self._stop.is_set() or (not intent and state.attempt_number >= 5),
            wait=wait_exponential(multiplier=0.2, max=self._config.retry_max_s),
            sleep=self._wait_paused,
            reraise=True,
        )
        try:
            retrying(self.consumer.commit, offsets=offsets, asynchronous=False)
            return True
        except KafkaException as exc:
            logger.warning("sink %s commit of %s failed: %s", "intent" if intent else "offset", ranges.describe(), exc)
            return False

    def _rewind(self, messages: list[Message]) -> None:
        """Forget messages not written and seek back to them, so they are read again."""
        firsts: dict[int, int] = {}
        for message in messages:
            if message.error() is None:
                p = message.partition()
                firsts[p] = min(firsts.get(p, message.offset()), message.offset())
        self._pending.drop(firsts, restart=True)
        self._inbox = [m for m in self._inbox if m.partition() not in firsts]
        for p, offset in firsts.items():
            if p in self._assigned:
                try:
                    self.consumer.seek(TopicPartition(self.topic, p, offset))
                except KafkaException as exc:
                    logger.warning("sink could not seek partition %d back to %d: %s", p, offset, exc)

    # --- redelivery ---------------------------------------------------------------------------
    def _replay_intents(self) -> None:
        """Write again, exactly as cut before, every batch a previous owner began but did not finish."""
        self._settle()
        partitions = sorted(self._unchecked)
        committed = self.consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=30)
        self._unchecked -= set(partitions)
        for tp in committed:
            if tp.offset >= 0 and tp.partition in self._assigned:
                self._written[tp.partition] = max(self._written.get(tp.partition, -1), tp.offset - 1)
        for ranges in unfinished(committed):
            logger.warning("sink replaying unfinished batch %s", ranges.describe())
            batch = read_exactly(self._kafka, self._group, self.topic, ranges, self._stop)
            rows = build_rows(batch, self._times, self._undecodable)
            self._inflight = (ranges, [], self._writer.submit(self._insert, ranges, rows))
            self._settle()
            self.stats.batches_replayed += 1

    def _undecodable(self, message: Message) -> None:
        self.stats.undecodable += 1
        logger.error("skipping undecodable event at %s[%d]@%d", self.topic, message.partition(), message.offset())


def _oldest_s(batch: list[Message]) -> float | None:
    """When the batch's oldest record was appended to Kafka (epoch seconds), if the records say."""
    stamps = [ts for kind, ts in (m.timestamp() for m in batch) if kind != TIMESTAMP_NOT_AVAILABLE]
    return min(stamps) / 1000 if stamps else None


def _failure(done: Future[Any]) -> str | None:
    """What ended an insert badly (its exception's name), or None when it succeeded."""
    if done.cancelled():
        return "cancelled"
    exc = done.exception()
    return None if exc is None else type(exc).__name__


def _jittered(wait: Callable[[RetryCallState], float], spread: float = 0.2) -> Callable[[RetryCallState], float]:
    """``wait``'s delay, ±``spread`` at random: sinks failing together do not retry in step."""
    return lambda state: wait(state) * random.uniform(1 - spread, 1 + spread)


def _stopping(state: RetryCallState) -> NoReturn:
    """The sink stops while an insert still fails: give the batch up, it will be redelivered."""
    raise SinkStopping() from (state.outcome.exception() if state.outcome else None)
