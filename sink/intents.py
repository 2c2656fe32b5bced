"""The commit-intent protocol: what makes the sink's at-least-once delivery exactly-once rows.

A batch is named by its offset ranges (``Ranges``). Before the insert the sink commits the
current offsets with the ranges as metadata (the intent) and derives the insert's dedup token
from them; after it, commits past the batch. An intent left behind is found by the partition's
next owner (``unfinished``), which re-reads exactly those ranges (``read_exactly``) and inserts
them under the same token, so ClickHouse keeps what it has and writes what it lacks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams.kafka_config import KafkaConnection

logger = logging.getLogger(__name__)

INTENT_PREFIX = "jobstream-sink/1 "
MAX_PARTITIONS_PER_BATCH = 128  # keeps the intent under Kafka's offset.metadata.max.bytes (4096)
_REPLAY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Ranges:
    """A batch's identity: per partition, the first and last offset it holds."""

    spans: tuple[tuple[int, int, int], ...]  # (partition, first, last), by partition

    @classmethod
    def of(cls, messages: Iterable[Message]) -> Ranges:
        bounds: dict[int, list[int]] = {}
        for message in messages:
            span = bounds.setdefault(message.partition(), [message.offset(), message.offset()])
            span[0], span[1] = min(span[0], message.offset()), max(span[1], message.offset())
        return cls(tuple((p, a, b) for p, (a, b) in sorted(bounds.items())))

    def describe(self) -> str:
        return ",".join(f"{p}:{a}-{b}" for p, a, b in self.spans)

    @classmethod
    def parse(cls, text: str) -> Ranges | None:
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


def commit_offsets(topic: str, ranges: Ranges, partitions: set[int], *, intent: bool) -> list[TopicPartition]:
    """What to commit for ``ranges`` on the ``partitions`` still owned: the intent (offsets unchanged,
    ranges as metadata) or the done batch (offsets after it, metadata cleared)."""
    metadata = INTENT_PREFIX + ranges.describe() if intent else ""
    return [
        TopicPartition(topic, p, a if intent else b + 1, metadata=metadata)
        for p, a, b in ranges.spans
        if p in partitions
    ]


def unfinished(committed: list[TopicPartition]) -> list[Ranges]:
    """The batches a previous owner began but did not finish, from the group's committed offsets.

    An intent counts only while the committed offset is still its first one in that partition
    (one batch over several partitions is listed once).
    """
    intents: dict[str, Ranges] = {}
    for tp in committed:
        metadata = tp.metadata or ""
        if not metadata.startswith(INTENT_PREFIX):
            continue
        ranges = Ranges.parse(metadata.removeprefix(INTENT_PREFIX))
        if ranges is not None and ranges.first(tp.partition) == tp.offset:
            intents[ranges.describe()] = ranges
    return list(intents.values())


def read_exactly(
    kafka: KafkaConnection, group: str, topic: str, ranges: Ranges, stop: threading.Event
) -> list[Message]:
    """The messages of ``ranges`` from Kafka, in (partition, offset) order, read by a consumer
    outside the sink's group (``<group>.replay``)."""
    reader = Consumer(kafka.consumer_config(f"{group}.replay", **{"enable.partition.eof": True}))
    wanted = {p: last for p, _, last in ranges.spans}
    got: dict[int, list[Message]] = {p: [] for p in wanted}
    try:
        reader.assign([TopicPartition(topic, p, first) for p, first, _ in ranges.spans])
        deadline = time.monotonic() + _REPLAY_TIMEOUT_S
        while wanted and time.monotonic() < deadline and not stop.is_set():
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
