"""Kafka ``jobs.events`` → ClickHouse, in batches, offsets committed only after the insert.

At-least-once delivery from Kafka plus ClickHouse insert deduplication: each
insert carries a token naming its exact (topic, partition, first offset, last
offset), so a batch redelivered after a crash between insert and commit is
dropped by ClickHouse instead of written twice.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition
from tenacity import Retrying, before_sleep_log, retry_if_exception_type, stop_never, wait_exponential, wait_random

from sink.store import ClickHouseStore
from streams import topics
from streams.events import JobEvent, load_event
from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)

GROUP_ID = "jobstream-sink"


class Sink:
    """Runs on its own thread; ``stop()`` finishes the batch in hand and commits it."""

    def __init__(self, bootstrap: str, store: ClickHouseStore, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._topic = settings.topic(topics.EVENTS)
        self._consumer = Consumer(consumer_config(bootstrap, settings.topic(GROUP_ID), settings))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clickhouse-sink", daemon=True)
        self.events_written = 0

    def start(self) -> "Sink":
        self._consumer.subscribe([self._topic])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._consumer.close()

    def _run(self) -> None:
        wait_s = self._settings.sink_batch_max_wait_ms / 1000
        while not self._stop.is_set():
            messages = self._consumer.consume(self._settings.sink_batch_max_size, timeout=wait_s)
            if messages:
                self._write(messages)

    def _write(self, messages: list[Message]) -> None:
        by_partition: dict[int, list[Message]] = defaultdict(list)
        for message in messages:
            if message.error():
                if message.error().code() != KafkaError._PARTITION_EOF:
                    logger.warning("sink consumer error: %s", message.error())
                continue
            by_partition[message.partition()].append(message)
        for partition, batch in by_partition.items():
            rows: list[tuple[JobEvent, int, int]] = []
            for message in batch:
                try:
                    rows.append((load_event(message.value()), partition, message.offset()))
                except ValueError:
                    logger.error("skipping undecodable event at %s[%d]@%d", self._topic, partition, message.offset())
            token = f"{self._topic}:{partition}:{batch[0].offset()}-{batch[-1].offset()}"
            self._insert_with_retry(rows, token)
            self._consumer.commit(
                offsets=[TopicPartition(self._topic, partition, batch[-1].offset() + 1)], asynchronous=False
            )
            self.events_written += len(rows)

    def _insert_with_retry(self, rows: list[tuple[JobEvent, int, int]], token: str) -> None:
        """ClickHouse down: retry with backoff for as long as it takes; lag grows, nothing is lost."""
        for attempt in Retrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.2, max=10) + wait_random(0, 0.2),
            stop=stop_never,
            before_sleep=before_sleep_log(logger, logging.WARNING),
            reraise=True,
        ):
            with attempt:
                if self._stop.is_set() and attempt.retry_state.attempt_number > 3:
                    raise RuntimeError("sink stopping with an unwritten batch; it will be redelivered")
                self._store.insert_events(rows, token)
