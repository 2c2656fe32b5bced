"""Session fixtures: ONE real Kafka broker, ONE ClickHouse, ONE running stack.

The broker comes from ``streams.broker`` (KAFKA_BOOTSTRAP → Docker → local
KRaft from Maven Central), exactly as ``jobstream up`` gets it. chDB allows one
data directory per process, so the whole session shares one. Each session uses
its own topic prefix, so reruns against an existing cluster never collide.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import httpx
import pytest
import uvicorn

from store.clickhouse import ClickHouseStore
from streams.broker import docker_available, kafka_broker
from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], object], timeout_s: float = 30.0, poll_interval_s: float = 0.05,
               message: str = "condition") -> object:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(poll_interval_s)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jobstream")


@pytest.fixture(scope="session")
def kafka_bootstrap(session_dir: Path) -> Iterator[str]:
    """A real Kafka broker for the whole session."""
    with kafka_broker(Settings(), data_dir=session_dir / "kafka", port=0) as bootstrap:
        yield bootstrap


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
        kafka_bootstrap=kafka_bootstrap, clickhouse_url=clickhouse_url, data_dir=session_dir / "data",
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.", requested_partitions=4, events_partitions=4,
        batch_max_wait_ms=20, sink_batch_max_wait_ms=50, calc_processes=2,
        # The fuzzer starts replays on the shared stack: keep them small and slow (tests/test_replay.py
        # raises these for its own stack).
        replay_max_rate=20.0, replay_max_jobs=50,
    )


class Server:
    """uvicorn serving an app on a thread, on a port the OS picked."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> "Server":
        self.thread.start()
        wait_until(lambda: self.server.started, 60, message="uvicorn to start")
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


class Worker:
    """A real processor worker: ``jobstream worker`` in its own process."""

    def __init__(self, settings: Settings, index: int = 0, log: Path | None = None) -> None:
        self.settings = settings
        self.index = index
        self.log = log or settings.data_dir / f"worker-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "Worker":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap or "",
            "JOBSTREAM_TOPIC_PREFIX": self.settings.topic_prefix,
            "JOBSTREAM_DATA_DIR": str(self.settings.data_dir),
            "JOBSTREAM_BATCH_MAX_WAIT_MS": str(self.settings.batch_max_wait_ms),
            "JOBSTREAM_BATCH_MAX_SIZE": str(self.settings.batch_max_size),
            "JOBSTREAM_CALC_PROCESSES": str(self.settings.calc_processes),
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobstream.cli", "worker", "--index", str(self.index)],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
            )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="session")
def stack(settings: Settings, store: ClickHouseStore) -> Iterator[str]:
    """API + SSE gateway + sink in this process, one Faust worker process; yields the base URL."""
    from jobstream.server import create_app

    ensure_topics(settings.kafka_bootstrap or "", settings)
    worker = Worker(settings).start()
    server = Server(create_app(settings, settings.kafka_bootstrap or "", store=store)).start()
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
