"""The gateway's Kafka tail: a thread reading ``jobs.events`` and handing batches to the event loop.

Assigned partitions, no consumer group: every gateway sees every event, several run side by
side. Each batch is handed to the loop and the thread waits until it was dispatched, so a
busy loop slows the tail instead of piling up callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, TopicPartition

from sse_gateway.entry import Entry
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

logger = logging.getLogger(__name__)

CONSUME_BATCH = 500

#: Called on the event loop with a batch's entries and the last offset read per partition.
OnBatch = Callable[[list[Entry], dict[int, int]], None]


class KafkaTail:
    """``seek()`` where to begin, then ``start()`` reading; ``stop()`` from any thread."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, on_batch: OnBatch) -> None:
        self.topic = settings.topic(topics.EVENTS)
        self._on_batch = on_batch
        self._consumer = Consumer(kafka.consumer_config("jobstream-sse-gateway",
                                                  **{"enable.partition.eof": False, "fetch.wait.max.ms": 100}))
        self._parse_model = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-fanout", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def seek(self, since_s: float) -> tuple[list[int], list[int]]:
        """Begin at the first record of the last ``since_s`` seconds (0: at the end) in every
        partition; returns the topic's first offset and where the tail begins, per partition."""
        metadata = self._consumer.list_topics(self.topic, timeout=10)
        partitions = len(metadata.topics[self.topic].partitions)
        since_ms = int((time.time() - since_s) * 1000)
        wanted = [TopicPartition(self.topic, p, since_ms) for p in range(partitions)]
        found = self._consumer.offsets_for_times(wanted, timeout=10)
        lows, starts = [], []
        for tp in found:
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, tp.partition), timeout=10)
            lows.append(low)
            starts.append(high if tp.offset < 0 or since_s == 0 else tp.offset)
        self._consumer.assign([TopicPartition(self.topic, p, o) for p, o in enumerate(starts)])
        return lows, starts

    def start(self, parse_model: bool) -> None:
        """Start reading (call on the loop that gets the batches); ``parse_model``: entries carry a JobEvent."""
        self._loop = asyncio.get_running_loop()
        self._parse_model = parse_model
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def _run(self) -> None:
        assert self._loop is not None
        parse_model = self._parse_model
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
                self._loop.call_soon_threadsafe(self._hand_over, entries, last_offsets, done)
            except RuntimeError:  # the loop is closed: we are shutting down
                return
            while not done.wait(0.5):
                if self._stop.is_set() or self._loop.is_closed():
                    return

    def _hand_over(self, entries: list[Entry], last_offsets: dict[int, int], done: threading.Event) -> None:
        try:
            self._on_batch(entries, last_offsets)
        finally:
            done.set()


def messages_positions(messages: list) -> dict[int, int]:
    """The last offset seen per partition in a batch (decodable or not)."""
    last: dict[int, int] = {}
    for message in messages:
        if not message.error():
            last[message.partition()] = message.offset()
    return last
