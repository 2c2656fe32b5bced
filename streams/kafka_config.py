"""Kafka client configuration shared by every confluent-kafka client we create."""

from __future__ import annotations

import logging
from typing import Any

from streams.settings import Settings


# librdkafka's own log lines go through Python logging instead of raw stderr.
RDKAFKA_LOGGER = logging.getLogger("rdkafka")


def admin_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "logger": RDKAFKA_LOGGER}


def producer_config(bootstrap: str, settings: Settings, **extra: Any) -> dict[str, Any]:
    """An idempotent, acks=all producer: an acknowledged event is on every in-sync replica."""
    return {
        "bootstrap.servers": bootstrap,
        "logger": RDKAFKA_LOGGER,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,  # a request waits for its ack; messages that queue meanwhile still batch
        "compression.type": "lz4",
        "message.max.bytes": settings.max_message_bytes,
        "message.timeout.ms": int(settings.produce_timeout_s * 1000),
        **extra,
    }


def consumer_config(bootstrap: str, group_id: str, settings: Settings, **extra: Any) -> dict[str, Any]:
    """A consumer that commits only when told to (offsets move after the work is done)."""
    return {
        "bootstrap.servers": bootstrap,
        "logger": RDKAFKA_LOGGER,
        "group.id": group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "fetch.max.bytes": max(settings.max_message_bytes, 52428800),
        "max.partition.fetch.bytes": settings.max_message_bytes,
        **extra,
    }
