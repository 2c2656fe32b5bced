"""The gateway's Kafka tail: a ``KafkaReader`` of ``jobs.events`` handing batches to the event loop.

Assigned partitions, no consumer group: every gateway sees every event, several run side by
side. Each batch is handed to the loop and the thread waits until it was dispatched, so a
busy loop slows the tail instead of piling up callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Self

from confluent_kafka import Message, TopicPartition

from sse_gateway.entry import Entry
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader, partitions_of
from telemetry import tracing

logger = logging.getLogger(__name__)

CONSUME_BATCH = 500

#: Called on the event loop with a batch's entries and the last offset read per partition.
OnBatch = Callable[[list[Entry], dict[int, int]], None]


class KafkaTail(KafkaReader):
    """``seek()`` where to begin, then ``start()`` reading; ``stop()`` from any thread."""

    chunk_size = CONSUME_BATCH

    def __init__(self, kafka: KafkaConnection, topic: str, on_batch: OnBatch, fetch_bytes: int) -> None:
        """``fetch_bytes``: per partition and fetch. librdkafka's defaults (the record size limit, 40 MB,
        per partition; 64 MB queued) let one flooded partition's fetched events sit seconds ahead of
        another partition's next event: a shallow queue keeps the tail fair between partitions."""
        super().__init__(
            kafka,
            topic,
            group_id="jobstream-sse-gateway",
            name="sse-fanout",
            **{
                "enable.partition.eof": False,
                "fetch.wait.max.ms": 100,
                "max.partition.fetch.bytes": fetch_bytes,
                "queued.max.messages.kbytes": max(1, fetch_bytes * 16 // 1024),
            },
        )
        self._on_batch = on_batch
        self._parse_model = False
        self._since_s = 0.0
        self._found: dict[int, int] = {}  # partition -> the first offset of the window (-1: none)
        self._lows: list[int] = []
        self._starts: list[int] = []
        self._attached = False

    def seek(self, since_s: float) -> tuple[list[int], list[int]]:
        """Begin at the first record of the last ``since_s`` seconds (0: at the end) in every
        partition; returns the topic's first offset and where the tail begins, per partition."""
        self._since_s = since_s
        self.attach()
        return list(self._lows), list(self._starts)

    def start(self, parse_model: bool = False) -> Self:
        """Start reading (call on the loop that gets the batches); ``parse_model``: entries carry a JobEvent."""
        self._parse_model = parse_model
        return super().start()

    def attach(self) -> None:
        """Ask where the window begins (offsets for times), then assign there (once: ``seek`` or ``start``)."""
        if self._attached:
            return
        since_ms = int((time.time() - self._since_s) * 1000)
        wanted = [TopicPartition(self.topic, p, since_ms) for p in partitions_of(self.consumer, self.topic)]
        self._found = {tp.partition: tp.offset for tp in self.consumer.offsets_for_times(wanted, timeout=10)}
        self._lows, self._starts = [], []
        super().attach()
        self._attached = True

    def start_offset(self, partition: int, low: int, high: int) -> int:
        found = self._found[partition]
        start = high if found < 0 or self._since_s == 0 else found
        self._lows.append(low)
        self._starts.append(start)
        return start

    def handle(self, messages: list[Message]) -> None:
        """Decode the batch and wait until the loop dispatched it; the loop gone or stopping: end."""
        parse_model = self._parse_model
        entries = []
        for message in messages:
            try:
                entries.append(
                    Entry.from_kafka(
                        message.partition(), message.offset(), message.timestamp()[1], message.value(), parse_model
                    )
                )
            except ValueError as exc:
                logger.error("skipping record %s[%d]@%d: %s", self.topic, message.partition(), message.offset(), exc)
        spans = tracing.consumed("jobstream.sse.fanout", messages) if tracing.enabled() else None
        if not self.to_loop(self._on_batch, entries, messages_positions(messages), wait=True):
            self._stop.set()
        if spans is not None:  # a span per job trace in the batch: read, decoded, handed to the streams
            spans.end()

    def on_loaded(self) -> None:
        """The recent window is read: nothing to announce (the fanout logs where it began)."""


def messages_positions(messages: list) -> dict[int, int]:
    """The last offset seen per partition in a batch (decodable or not)."""
    last: dict[int, int] = {}
    for message in messages:
        if not message.error():
            last[message.partition()] = message.offset()
    return last
