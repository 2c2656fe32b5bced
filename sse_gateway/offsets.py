"""Where ``jobs.events`` stands for the streams' history: the sink's committed offsets (ClickHouse
holds every record below them) and the topic's watermarks, read by a consumer that never joins a
group, and cached briefly so a burst of reconnects shares one answer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from streams.kafka_config import KafkaConnection
from streams.lag import committed_offsets


class TopicOffsets:
    """``partitions`` is set by the fanout once its tail knows the topic."""

    def __init__(self, kafka: KafkaConnection, topic: str, sink_group: str) -> None:
        self.topic = topic
        self.partitions = 0
        # Reads the sink's committed offsets and the topic's watermarks; never joins a group.
        self._consumer = Consumer(kafka.consumer_config(sink_group))
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[Any]]] = {}

    async def sink_committed(self) -> list[int]:
        """The sink's committed offset per partition (-1 if none): ClickHouse holds every record below it."""
        return await asyncio.to_thread(self._cached, "committed", 0.2, self._read_committed)

    async def watermarks(self, fresh: bool = False) -> list[tuple[int, int]]:
        """(low, high) per partition of ``jobs.events``."""
        return await asyncio.to_thread(self._cached, "watermarks", 0.0 if fresh else 0.5, self._read_watermarks)

    def close(self) -> None:
        self._consumer.close()

    def _cached(self, name: str, ttl_s: float, read: Callable[[], list[Any]]) -> list[Any]:
        with self._lock:  # one reader at a time; a burst of reconnects shares one answer
            now = time.monotonic()
            hit = self._cache.get(name)
            if hit is not None and now - hit[0] < ttl_s:
                return hit[1]
            value = read()
            self._cache[name] = (time.monotonic(), value)
            return value

    def _read_committed(self) -> list[int]:
        return committed_offsets(self._consumer, self.topic, list(range(self.partitions)))

    def _read_watermarks(self) -> list[tuple[int, int]]:
        return [
            self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)
            for p in range(self.partitions)
        ]
