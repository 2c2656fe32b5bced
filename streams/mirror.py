"""An in-memory mirror of a (compacted) topic: read from the beginning, then tail it.

Small state that must survive restarts and be shared by every replica (Idempotency-Keys,
replay plans and positions) lives in a compacted topic; each process keeps a mirror.
``loaded`` is set once everything that was in the topic at start-up has been applied,
so a service can stay unready until it knows the stored state.
"""

from __future__ import annotations

from confluent_kafka import Message

from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader
from streams.topics import reader_group


class TopicMirror(KafkaReader):
    """Subclasses implement ``apply(key, value)`` (value None: a tombstone); it runs on the mirror's thread."""

    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        super().__init__(kafka, topic, group_id=reader_group(topic), name=f"mirror-{topic}")

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        raise NotImplementedError

    def handle_message(self, message: Message) -> None:
        self.apply(message.key(), message.value())
