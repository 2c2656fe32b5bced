"""Consumer lag: how far a consumer group's committed offsets are behind a topic's end.

One definition for every reader of it: the API's lag monitor (processors on ``jobs.requested``),
the sink's catch-up checks and the SSE gateway's "is it in ClickHouse yet" (the sink's group on
``jobs.events``). Reading a group's offsets never joins the group.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_fixed

from streams.kafka_config import KafkaConnection
from streams.reader import partitions_of, transient, watermarks


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    committed: int  #: the group's next offset to read; -1: it never committed here
    low: int  #: the first offset still in the partition
    high: int  #: where the next record lands

    @property
    def lag(self) -> int:
        """Records in the partition the group has not committed (records deleted unread do not count)."""
        return max(0, self.high - max(self.committed, self.low))


def committed_offsets(consumer: Consumer, topic: str, partitions: list[int], timeout_s: float = 10.0) -> list[int]:
    """The committed offset of ``consumer``'s group per partition, in ``partitions`` order (-1: none)."""
    found = {
        tp.partition: tp for tp in consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=timeout_s)
    }
    return [found[p].offset if found[p].offset >= 0 and found[p].error is None else -1 for p in partitions]


def consumer_lag(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[PartitionLag]:
    """Per partition of ``topic``, where ``consumer``'s group stands; transient broker errors (a
    coordinator still loading, say) are retried until ``timeout_s``."""
    for attempt in Retrying(
        retry=retry_if_exception(transient), stop=stop_after_delay(timeout_s), wait=wait_fixed(0.1), reraise=True
    ):
        with attempt:
            partitions = partitions_of(consumer, topic, timeout_s)
            committed = committed_offsets(consumer, topic, partitions, timeout_s)
            marks = watermarks(consumer, topic, partitions, timeout_s)
            return [PartitionLag(p, c, *marks[p]) for p, c in zip(partitions, committed, strict=False)]
    raise AssertionError("unreachable")  # tenacity either returned or re-raised


def group_lag(kafka: KafkaConnection, group_id: str, topic: str, timeout_s: float = 10.0) -> int:
    """Records on ``topic`` not yet committed by ``group_id`` (all partitions), with a consumer of its own."""
    reader = Consumer(kafka.consumer_config(group_id))
    try:
        return sum(p.lag for p in consumer_lag(reader, topic, timeout_s))
    finally:
        reader.close()
