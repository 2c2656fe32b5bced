"""Webhook delivery attempts into ClickHouse: ``webhooks.attempts`` → ``webhook_deliveries``.

The notifier cannot open the store (embedded chDB allows one process per data dir; the notifier
may run elsewhere), so it writes one JSON record per attempt to Kafka, already shaped as the
table's row, and this reader inserts them in chunks. Offsets are committed after the insert;
a chunk inserted twice (a crash between insert and commit) collapses in the ReplacingMergeTree,
and readers use ``FINAL``.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Message

from store.clickhouse import ClickHouseStore
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader
from streams.settings import Settings

logger = logging.getLogger(__name__)

TABLE = "webhook_deliveries"


class WebhookLog(KafkaReader):
    chunk_size = 5000
    attach_on_thread = True

    def __init__(self, kafka: KafkaConnection, store: ClickHouseStore, settings: Settings) -> None:
        super().__init__(
            kafka,
            settings.topic(topics.WEBHOOK_ATTEMPTS),
            group_id=settings.topic(topics.WEBHOOK_LOG_GROUP),
            name="sink-webhooks",
        )
        self._store = store
        self._retry_max_s = settings.sink_retry_max_s

    def attach(self) -> None:
        self.consumer.subscribe([self.topic])

    def handle(self, messages: list[Message]) -> None:
        lines = b"\n".join(v for m in messages if (v := m.value()))
        spans: dict[int, list[int]] = {}
        for m in messages:
            spans.setdefault(m.partition(), []).append(m.offset())
        token = "webhooks:" + ",".join(f"{p}:{min(o)}-{max(o)}" for p, o in sorted(spans.items()))
        pause = 0.2
        while True:
            try:
                self._store.insert_json(TABLE, lines, token)
                break
            except Exception:  # ClickHouse away: keep the chunk, try again (the commit waits)
                if self.stopping:
                    return
                logger.warning("could not store %d webhook attempts; retrying in %.1fs", len(messages), pause)
                time.sleep(pause)
                pause = min(pause * 2, self._retry_max_s)
        self.consumer.commit(asynchronous=False)
