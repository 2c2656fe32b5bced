"""Where the Kafka broker comes from — the one place that decides.

Order: ``KAFKA_BOOTSTRAP`` if set → a testcontainers Kafka when a Docker engine
answers → a local Apache Kafka (KRaft) provisioned from Maven Central.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

from streams.kafka_config import KafkaConnection
from streams.local_kafka import LocalKafka
from streams.settings import Settings

logger = logging.getLogger(__name__)

# Pinned Confluent image: testcontainers' KafkaContainer targets cp-kafka, not apache/kafka.
KAFKA_IMAGE = "confluentinc/cp-kafka:7.9.1"


def docker_available(timeout_s: float = 2.0) -> bool:
    """True when a Docker engine answers a ping (a client binary alone is not enough)."""
    try:
        import docker

        client = docker.from_env(timeout=timeout_s)  # type: ignore[attr-defined]  # mypy finds our docker/ folder
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@contextlib.contextmanager
def kafka_broker(
    settings: Settings, data_dir: Path | None = None, port: int | None = None
) -> Iterator[KafkaConnection]:
    """Yield the connection to a real broker, starting (and later stopping) one if needed."""
    if settings.kafka_bootstrap:
        logger.info("using Kafka at %s (KAFKA_BOOTSTRAP)", settings.kafka_bootstrap)
        yield KafkaConnection.from_settings(settings)
        return
    if docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer(KAFKA_IMAGE).with_kraft() as container:
            bootstrap = container.get_bootstrap_server()
            logger.info("using testcontainers Kafka at %s", bootstrap)
            yield KafkaConnection.from_settings(settings, bootstrap)
        return
    broker = LocalKafka(
        data_dir or settings.data_dir / "kafka",
        port=settings.local_kafka_port if port is None else port,
        heap=settings.local_kafka_heap,
        security=settings.local_kafka_security,
    )
    with broker:
        yield local_connection(broker, settings)


def local_connection(broker: LocalKafka, settings: Settings) -> KafkaConnection:
    """The connection to a started local broker; on a secured one ``settings``' topics are created and every
    role is granted its ACLs on them (as its admin), and each client must pick its role (``for_role``)."""
    plain = KafkaConnection.from_settings(settings, broker.bootstrap)
    if not broker.secured:
        return plain
    from streams.acls import grant_and_wait
    from streams.topics import ensure_topics

    logins = broker.role_logins()
    connection = dataclasses.replace(
        plain, security=broker.client_security(), role_logins=tuple(sorted(logins.items()))
    )
    ensure_topics(connection.for_role("admin"), settings)  # the roles may not create them
    grant_and_wait(connection, settings)
    logger.info("local Kafka is SASL_SSL (SCRAM) with per-role ACLs; CA %s", broker.ca_file)
    return connection
