"""Reuse answers into ClickHouse: Kafka ``jobs.reuses`` → ``job_reuses``, for ``/v1/stats`` and rollups.

A request the API answered with an earlier job (``reuse``: a hit or a join) makes no job and
no result row; the API records it on ``jobs.reuses`` instead, and this reader writes one row
per record. At least once: offsets are committed after the insert, and a record written twice
has the same ``answer_id`` (``job_reuses`` is a ReplacingMergeTree on it, and every count reads
``uniqExact(answer_id)``), so nothing is counted twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import TopicPartition

from store.clickhouse import ClickHouseStore
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader
from streams.settings import Settings
from streams.wire import decode_reused

logger = logging.getLogger(__name__)

_COLUMNS = ("tenant", "answer_id", "kind", "job_id", "how", "ts")


@dataclass(frozen=True)
class ReuseSinkConfig:
    topic: str
    group_id: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ReuseSinkConfig:
        return cls(settings.topic(topics.REUSES), settings.topic(topics.REUSE_SINK_GROUP))


class ReuseSink(KafkaReader):
    """Reads its group's share of ``jobs.reuses``; each chunk is one insert, then one commit."""

    chunk_size = 10_000

    def __init__(self, kafka: KafkaConnection, store: ClickHouseStore, config: ReuseSinkConfig) -> None:
        super().__init__(kafka, config.topic, group_id=config.group_id, name="reuse-sink")
        self._store = store
        self.written = 0  #: rows inserted (a redelivered record counted again)

    def attach(self) -> None:
        self.consumer.subscribe([self.topic])

    def round(self) -> None:
        messages = [m for m in self.read() if m.error() is None]
        if not messages:
            return
        rows = []
        for message in messages:
            try:
                r = decode_reused(message.value())
            except ValueError:
                logger.warning("skipping an undecodable reuse record at offset %d", message.offset())
                continue
            rows.append((r.tenant, r.answer_id, r.kind, r.job_id, r.how.value, r.ts))
        first: dict[int, int] = {}
        for message in messages:
            first.setdefault(message.partition(), message.offset())
        token = "reuses:" + ",".join(f"{p}@{o}+{len(messages)}" for p, o in sorted(first.items()))
        try:
            self._store.insert("job_reuses", rows, _COLUMNS, token)
        except Exception:
            for partition, offset in first.items():  # read them again after the pause
                self.consumer.seek(TopicPartition(self.topic, partition, offset))
            raise
        self.consumer.commit(asynchronous=False)
        self.written += len(rows)
