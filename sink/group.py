"""The sink's Kafka consumer group: its name, its static membership id and its lag. The SSE
gateway reads this group's committed offsets too (ClickHouse holds every record below them).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

from streams import lag, topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

GROUP_ID = topics.SINK_GROUP  # one name: the gateway reads this group's offsets too


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
    """Events on ``jobs.events`` not yet committed by the sink's group (all partitions)."""
    return lag.group_lag(kafka, settings.topic(GROUP_ID), settings.topic(topics.EVENTS), timeout_s)
