"""Session fixtures: ONE real Kafka broker, ONE ClickHouse, ONE running stack.

The broker comes from ``streams.broker`` (KAFKA_BOOTSTRAP → Docker → local
KRaft from Maven Central), exactly as ``jobstream up`` gets it. chDB allows one
data directory per process, so the whole session shares one. Each session uses
its own topic prefix, so reruns against an existing cluster never collide. The helpers
tests share live in ``tests.support``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store.clickhouse import ClickHouseStore
from streams.broker import docker_available, kafka_broker
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import Worker


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobstream")


@pytest.fixture(scope="session")
def kafka_bootstrap(session_dir: Path) -> Iterator[str]:
    """A real Kafka broker for the whole session."""
    with kafka_broker(Settings(), data_dir=session_dir / "kafka", port=0) as kafka:
        yield kafka.bootstrap


@pytest.fixture(scope="session")
def clickhouse_url(session_dir: Path) -> Iterator[str]:
    """CLICKHOUSE_URL if set, a testcontainers ClickHouse server with Docker, else chDB."""
    if os.environ.get("CLICKHOUSE_URL"):
        yield os.environ["CLICKHOUSE_URL"]
    elif docker_available():
        from testcontainers.clickhouse import ClickHouseContainer

        with ClickHouseContainer("clickhouse/clickhouse-server:25.8") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(8123)
            yield f"http://{container.username}:{container.password}@{host}:{port}"
    else:
        yield f"chdb://{session_dir / 'clickhouse'}"


@pytest.fixture(scope="session")
def store(clickhouse_url: str) -> Iterator[ClickHouseStore]:
    store = ClickHouseStore(clickhouse_url)
    yield store
    store.close()


@pytest.fixture(scope="session")
def settings(session_dir: Path, kafka_bootstrap: str, clickhouse_url: str) -> Settings:
    return Settings(
        kafka_bootstrap=kafka_bootstrap,
        clickhouse_url=clickhouse_url,
        data_dir=session_dir / "data",
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
        requested_partitions=4,
        events_partitions=4,
        batch_max_wait_ms=20,
        sink_batch_max_wait_ms=50,
        calc_processes=2,
        # The fuzzer starts replays on the shared stack: keep them small and slow (tests/test_replay.py
        # raises these for its own stack).
        replay_max_rate=20.0,
        replay_max_jobs=50,
        # Webhook tests post to a receiver on 127.0.0.1 over http, and watch retries happen quickly.
        webhook_allow_private=True,
        webhook_backoff_s=0.2,
        webhook_backoff_max_s=2.0,
    )


@pytest.fixture(scope="session")
def stack(settings: Settings, store: ClickHouseStore) -> Iterator[str]:
    """API + SSE gateway + sink in this process, one Faust worker process; yields the base URL."""
    from jobstream.server import create_app

    ensure_topics(KafkaConnection.from_settings(settings), settings)
    worker = Worker(settings).start()
    server = Server(create_app(settings, store=store)).start()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="healthz")
    try:
        yield server.url
    finally:
        server.stop()
        worker.stop()


@pytest.fixture
def client(stack: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack, timeout=30) as client:
        yield client
