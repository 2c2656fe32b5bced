"""Processor lag, measured, so the API can say 429 instead of accepting work it cannot do in time.

A thread asks Kafka every ``lag_check_s`` for the processors' committed offsets
on ``jobs.requested`` and the partitions' end offsets; their difference is the
number of jobs waiting. The rate at which committed offsets move gives the
processing speed, and so an honest ``Retry-After``.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from confluent_kafka import Consumer, TopicPartition

from streams import topics
from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)


class LagMonitor:
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self._settings = settings
        self._topic = settings.topic(topics.REQUESTED)
        # Reading the processors' committed offsets needs their group id, but never joins the group.
        self._consumer = Consumer(consumer_config(bootstrap, settings.topic(topics.PROCESSORS_GROUP), settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-monitor", daemon=True)
        self.lag = 0
        self.rate = 0.0  # jobs/s the processors got through, smoothed
        self._last: tuple[float, int] | None = None

    def start(self) -> "LagMonitor":
        self._partitions = [
            TopicPartition(self._topic, p)
            for p in self._consumer.list_topics(self._topic, timeout=10).topics[self._topic].partitions
        ]
        try:
            self.measure()
        except Exception:  # e.g. a just-created topic without a leader yet: the thread tries again
            logger.info("processor lag not measurable yet", exc_info=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.wait(self._settings.lag_check_s):
            try:
                self.measure()
            except Exception:
                logger.warning("could not measure processor lag", exc_info=True)

    def measure(self) -> int:
        committed = self._consumer.committed(self._partitions, timeout=5)
        lag = 0
        done = 0
        for tp in committed:
            end = self._consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5)[1]
            start = max(tp.offset, 0)
            lag += max(end - start, 0)
            done += start
        now = time.monotonic()
        if self._last is not None and now > self._last[0]:
            instant = max(done - self._last[1], 0) / (now - self._last[0])
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
        self._last = (now, done)
        self.lag = lag
        return lag

    @property
    def overloaded(self) -> bool:
        return self.lag >= self._settings.max_queued_jobs

    def retry_after_s(self, ahead: int | None = None) -> int:
        """Seconds until ``ahead`` jobs (default: the current lag) are likely done; at least 1."""
        waiting = self.lag if ahead is None else ahead
        if self.rate <= 0:
            return self._settings.retry_after_s
        return max(1, min(3600, math.ceil(waiting / self.rate)))
