"""The Kafka connection: where the cluster is and the options every client we create gets.

Components take a ``KafkaConnection`` instead of a bare bootstrap address, so what applies to
every client (address, logging, later transport security) is set here, in one place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from streams.settings import Settings

# librdkafka's own log lines go through Python logging instead of raw stderr.
RDKAFKA_LOGGER = logging.getLogger("rdkafka")


@dataclass(frozen=True, slots=True)
class KafkaConnection:
    """A Kafka cluster and the client options derived from ``Settings`` once."""

    bootstrap: str  #: ``host:port[,host:port...]``
    max_message_bytes: int  #: largest record we produce or fetch
    produce_timeout_s: float  #: how long a producer tries to deliver a record

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | None = None) -> KafkaConnection:
        """The connection to ``bootstrap`` (default: the settings' ``kafka_bootstrap``)."""
        address = bootstrap or settings.kafka_bootstrap
        if not address:
            raise ValueError("no Kafka bootstrap address (KAFKA_BOOTSTRAP is unset)")
        return cls(address, settings.max_message_bytes, settings.produce_timeout_s)

    def client_config(self) -> dict[str, Any]:
        """What every client gets: the address and logging (and, later, transport security)."""
        return {"bootstrap.servers": self.bootstrap, "logger": RDKAFKA_LOGGER}

    def admin_config(self) -> dict[str, Any]:
        return self.client_config()

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """An idempotent, acks=all producer: an acknowledged event is on every in-sync replica."""
        return {
            **self.client_config(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 0,  # a request waits for its ack; messages that queue meanwhile still batch
            "compression.type": "lz4",
            "message.max.bytes": self.max_message_bytes,
            "message.timeout.ms": int(self.produce_timeout_s * 1000),
            **extra,
        }

    def consumer_config(self, group_id: str, **extra: Any) -> dict[str, Any]:
        """A consumer that commits only when told to (offsets move after the work is done)."""
        return {
            **self.client_config(),
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": max(self.max_message_bytes, 52428800),
            "max.partition.fetch.bytes": self.max_message_bytes,
            **extra,
        }
