"""The sink's Kafka consumer group: its name, its static membership id, its lag, and which
broker errors are worth waiting out. The SSE gateway reads this group's committed offsets too
(ClickHouse holds every record below them).
"""

from __future__ import annotations

import hashlib
import socket
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

GROUP_ID = topics.SINK_GROUP  # one name: the gateway reads this group's offsets too

# Broker answers worth waiting out (librdkafka does not always flag them retriable).
_TRANSIENT = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._WAIT_COORD,
    KafkaError._ALL_BROKERS_DOWN,
})


def instance_id(settings: Settings) -> str | None:
    """The sink's static group membership id (``group.instance.id``); None: dynamic membership.

    A sink that restarts with the same id takes its partitions back at once, instead of waiting
    for the dead member's session to expire (45 s). ``JOBSTREAM_SINK_INSTANCE_ID`` if set (empty:
    dynamic); else derived from the host name and the data dir, which is stable across restarts
    of one installation and differs between hosts and installations.
    """
    if settings.sink_instance_id is not None:
        return settings.sink_instance_id.strip() or None
    host = socket.gethostname()
    place = hashlib.sha256(f"{host}\0{Path(settings.data_dir).resolve()}".encode()).hexdigest()[:12]
    return f"sink-{host[:64]}-{place}"


def group_lag(kafka: KafkaConnection, settings: Settings, timeout_s: float = 10.0) -> int:
    """Events on ``jobs.events`` not yet committed by the sink's group (all partitions).

    Retriable broker errors (a coordinator still loading, say) are retried until ``timeout_s``.
    """
    topic = settings.topic(topics.EVENTS)
    reader = Consumer(kafka.consumer_config(settings.topic(GROUP_ID)))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                metadata = reader.list_topics(topic, timeout=timeout_s)
                partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
                lag = 0
                for tp in reader.committed(partitions, timeout=timeout_s):
                    low, high = reader.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
                    lag += high - (tp.offset if tp.offset >= 0 else low)
                return lag
            except KafkaException as exc:
                if not transient(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
    finally:
        reader.close()


def transient(exc: KafkaException) -> bool:
    """A Kafka error that goes away by waiting (coordinator moving or loading, timeouts)."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)
