"""Processor lag, measured, so the API can say 429 instead of accepting work it cannot do in time.

A ``KafkaReader`` thread asks Kafka every ``lag_check_s`` for the processors'
consumer lag on ``jobs.requested`` (``streams.lag``): the number of jobs waiting.
The rate at which committed offsets move gives the processing speed, and so an
honest ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_END, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaException, TopicPartition

from streams import topics
from streams.kafka_config import KafkaConnection
from streams.lag import PartitionLag, consumer_lag
from streams.reader import KafkaReader
from streams.settings import Settings
from telemetry import metrics

logger = logging.getLogger(__name__)

PEEK_TIMEOUT_S = 2.0  # longest a lag check waits for the oldest waiting records' timestamps


@dataclass(frozen=True)
class LagConfig:
    """What the lag monitor needs of the settings: whose lag, how often, when to refuse, the hint's bounds."""

    topic: str
    group_id: str  #: the processors' group: its committed offsets are what is done
    check_s: float
    max_queued_jobs: int
    retry_after_s: int  #: the hint before a rate is measured
    retry_after_max_s: int
    metrics: bool  #: export per-partition lag and the oldest waiting job's age

    @classmethod
    def from_settings(cls, settings: Settings) -> LagConfig:
        return cls(
            topic=settings.topic(topics.REQUESTED),
            group_id=settings.topic(topics.PROCESSORS_GROUP),
            check_s=settings.lag_check_s,
            max_queued_jobs=settings.max_queued_jobs,
            retry_after_s=settings.retry_after_s,
            retry_after_max_s=settings.retry_after_max_s,
            metrics=settings.metrics,
        )


class LagMonitor(KafkaReader):
    """Measures the processors' lag on its reader thread every ``lag_check_s``; reads no records."""

    def __init__(self, kafka: KafkaConnection, config: LagConfig) -> None:
        # Reading the processors' committed offsets needs their group id, but never joins the group.
        super().__init__(
            kafka,
            config.topic,
            group_id=config.group_id,
            name="lag-monitor",
        )
        self._config = config
        self._kafka = kafka
        self._group = config.group_id
        self._peek: Consumer | None = None
        self._peek_partitions: set[int] = set()
        self.lag = 0
        self.rate = 0.0  # jobs/s the processors got through, smoothed
        self._last: tuple[float, int] | None = None

    def attach(self) -> None:
        try:
            self.measure()
        except Exception:  # e.g. a just-created topic without a leader yet: the thread tries again
            logger.info("processor lag not measurable yet", exc_info=True)

    def round(self) -> None:
        if self._stop.wait(self._config.check_s):
            return
        try:
            self.measure()
        except Exception:
            logger.warning("could not measure processor lag", exc_info=True)

    def measure(self) -> int:
        partitions = consumer_lag(self.consumer, self.topic, timeout_s=5)
        done = sum(max(p.committed, 0) for p in partitions)
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            instant = max(done - self._last[1], 0) / (now - self._last[0])
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
        self._last = (now, done)
        self.lag = sum(p.lag for p in partitions)
        if self._config.metrics:
            self._export(partitions)
        return self.lag

    def _export(self, partitions: list[PartitionLag]) -> None:
        ages = self._oldest_ages(partitions)
        for p in partitions:
            partition = str(p.partition)
            metrics.PROCESSOR_LAG.labels(self._group, partition).set(p.lag)
            metrics.OLDEST_WAITING.labels(self._group, partition).set(ages.get(p.partition, 0.0))

    def _oldest_ages(self, partitions: list[PartitionLag]) -> dict[int, float]:
        """Seconds since the first record the processors have not committed was appended, per lagging
        partition: read that one record with a consumer of its own (never committing).

        The reader is assigned every partition once; each check only ``seek``s, which releases the
        GIL while it waits (``assign`` does not: repeated every check it could stall the event loop)."""
        waiting = {p.partition: max(p.committed, p.low) for p in partitions if p.lag > 0}
        if not waiting:
            return {}
        peek = self._peek_reader({p.partition for p in partitions})
        ages: dict[int, float] = {}
        try:
            for partition, offset in waiting.items():
                peek.seek(TopicPartition(self.topic, partition, offset))
            deadline = time.monotonic() + PEEK_TIMEOUT_S
            while len(ages) < len(waiting) and time.monotonic() < deadline and not self.stopping:
                for message in peek.consume(len(waiting), timeout=0.2):
                    partition = message.partition()
                    if message.error() is not None or partition in ages or partition not in waiting:
                        continue
                    if message.offset() < waiting[partition]:  # fetched before the seek
                        continue
                    kind, ts_ms = message.timestamp()
                    if kind != TIMESTAMP_NOT_AVAILABLE:
                        ages[partition] = max(0.0, time.time() - ts_ms / 1000)
        except KafkaException as exc:  # e.g. the assignment is not active yet: next check
            logger.info("oldest waiting job not measured: %s", exc)
        return ages

    def _peek_reader(self, partitions: set[int]) -> Consumer:
        if self._peek is None or self._peek_partitions != partitions:
            if self._peek is None:
                # it reads one record per lagging partition per check: small fetches, little read-ahead
                self._peek = Consumer(
                    self._kafka.consumer_config(
                        self._group,
                        **{
                            "max.partition.fetch.bytes": 65536,
                            "queued.min.messages": 1,
                            "queued.max.messages.kbytes": 1024,
                        },
                    )
                )
            self._peek.assign([TopicPartition(self.topic, p, OFFSET_END) for p in sorted(partitions)])
            self._peek_partitions = partitions
        return self._peek

    def stop(self, timeout_s: float = 10.0) -> None:
        super().stop(timeout_s)
        if self._peek is not None and not self.running:  # its thread (if it ever ran) is done with it
            self._peek.close()

    @property
    def overloaded(self) -> bool:
        return self.lag >= self._config.max_queued_jobs

    def retry_after_s(self, ahead: int | None = None) -> int:
        """Seconds until ``ahead`` jobs (default: the current lag) are likely done, capped."""
        return retry_after_s(self.lag if ahead is None else ahead, self.rate, self._config)


def retry_after_s(ahead: int, rate: float, config: LagConfig) -> int:
    """A polling hint: ``ahead`` jobs at ``rate`` jobs/s, between 1 and ``retry_after_max_s``.

    The smoothed rate decays toward 0 while the service sits idle, so the quotient alone grows
    without bound; the cap keeps the hint a sane polling interval (the answer may come sooner).
    """
    if rate <= 0:
        return min(config.retry_after_s, config.retry_after_max_s)
    return max(1, min(config.retry_after_max_s, math.ceil(ahead / rate)))


class SubmitSlots:
    """Submits of one API process waiting for Kafka at once (JOBSTREAM_MAX_SUBMITS_IN_FLIGHT).

    While the broker does not answer, every submit waits up to JOBSTREAM_PRODUCE_TIMEOUT_S; without
    a bound they pile up by the thousand and answers come far later than that. Past the bound a
    submit is refused at once (503 + Retry-After), having written nothing. Used from the event
    loop only, so a plain counter.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0

    def acquire(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1
