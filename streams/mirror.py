"""An in-memory mirror of a (compacted) topic: read from the beginning, then tail it.

Small state that must survive restarts and be shared by every replica (Idempotency-Keys,
replay plans and positions) lives in a compacted topic; each process keeps a mirror.
``loaded`` is set once everything that was in the topic at start-up has been applied,
so a service can stay unready until it knows the stored state.
"""

from __future__ import annotations

import logging
import threading
from typing import Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from tenacity import Retrying, stop_after_delay, wait_exponential

from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)


class TopicMirror:
    """Subclasses implement ``apply(key, value)`` (value None: a tombstone); it runs on the mirror's thread."""

    def __init__(self, bootstrap: str, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_config(bootstrap, "unused", settings))
        self._stop = threading.Event()
        self._ends: dict[int, int] = {}
        self.loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"mirror-{topic}", daemon=True)

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = list(metadata.topics[self.topic].partitions)
        # A just-created topic may not have leaders yet: retry for a while.
        for attempt in Retrying(stop=stop_after_delay(60), wait=wait_exponential(multiplier=0.1, max=2), reraise=True):
            with attempt:
                self._ends = {p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                              for p in partitions}
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        positions = {p: 0 for p in self._ends}
        if all(end == 0 for end in self._ends.values()):
            self.loaded.set()
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, timeout=0.2):
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        logger.warning("%s consumer error: %s", self.topic, message.error())
                    continue
                positions[message.partition()] = message.offset() + 1
                try:
                    self.apply(message.key(), message.value())
                except Exception:  # one bad record must not stop the mirror
                    logger.exception("%s: could not apply the record at offset %d", self.topic, message.offset())
            if not self.loaded.is_set() and all(positions[p] >= end for p, end in self._ends.items()):
                logger.info("mirrored %s", self.topic)
                self.loaded.set()
