"""A real Apache Kafka broker (KRaft, single combined node) run from Maven Central jars.

Used when there is no ``KAFKA_BOOTSTRAP`` and no Docker engine. The version is pinned in
``docker/kafka/pom.xml``; Maven resolves the classpath once, then the storage is formatted,
``kafka.Kafka`` started with ``java`` and stopped with SIGTERM. The JVM dies with the Python
process that started it, even after ``kill -9``.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient

from streams.errors import JobstreamError
from streams.lifeline import die_with_parent

logger = logging.getLogger(__name__)

POM = Path(__file__).resolve().parent.parent / "docker" / "kafka" / "pom.xml"
CLASSPATH_CACHE = Path(os.environ.get("JOBSTREAM_CACHE_DIR", Path.home() / ".cache" / "jobstream")) / "kafka"


class LocalKafkaError(JobstreamError, RuntimeError):
    """The local broker could not be provisioned or did not start."""


def kafka_version(pom: Path = POM) -> str:
    text = pom.read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def provision(pom: Path = POM) -> str:
    """Resolve (downloading on first use) the broker's classpath with Maven; returns it."""
    cache = CLASSPATH_CACHE / f"classpath-{kafka_version(pom)}.txt"
    if cache.exists():
        classpath = cache.read_text().strip()
        if all(Path(jar).exists() for jar in classpath.split(os.pathsep)):
            return classpath
    mvn = shutil.which("mvn")
    if mvn is None:
        raise LocalKafkaError("Maven (mvn) is needed to fetch the Kafka broker jars; install it or set KAFKA_BOOTSTRAP")
    cache.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:build-classpath",
            "-Dmdep.includeScope=runtime",
            f"-Dmdep.outputFile={cache}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not cache.exists():
        raise LocalKafkaError(f"mvn could not resolve the Kafka classpath:\n{result.stdout}\n{result.stderr}")
    logger.info("resolved Kafka %s classpath in %.1fs", kafka_version(pom), time.monotonic() - started)
    return cache.read_text().strip()


def new_cluster_id() -> str:
    """A Kafka cluster id (base64url of a UUID), never starting with '-' which the
    StorageTool's argument parser would take for an option."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""


class LocalKafka:
    """One KRaft broker+controller on loopback; use as a context manager or start()/stop()."""

    def __init__(self, data_dir: Path, port: int = 0, heap: str = "768m", log_level: str = "WARN") -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.controller_port = free_port()
        self.heap = heap
        self.log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    def _write_config(self) -> Path:
        logs = self.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "log.dirs": str(logs),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "message.max.bytes": str(64 * 1024 * 1024),
            "replica.fetch.max.bytes": str(64 * 1024 * 1024),
            "socket.request.max.bytes": str(200 * 1024 * 1024),
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file, level=self.log_level))
        return path

    def _java(self, classpath: str, main: str, *args: str) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise LocalKafkaError("Java 17+ is needed for the local Kafka broker; install it or set KAFKA_BOOTSTRAP")
        return [
            java,
            f"-Xms{self.heap}",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            classpath,
            main,
            *args,
        ]

    def start(self, timeout_s: float = 90.0) -> LocalKafka:
        classpath = provision()
        config = self._write_config()
        if not (self.data_dir / "logs" / "meta.properties").exists():
            cluster_id = new_cluster_id()
            fmt = subprocess.run(
                self._java(
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    "-t",
                    cluster_id,
                    "-c",
                    str(config),
                    "--standalone",
                    "--ignore-formatted",
                ),
                capture_output=True,
                text=True,
            )
            if fmt.returncode != 0:
                raise LocalKafkaError(f"formatting Kafka storage failed:\n{fmt.stdout}\n{fmt.stderr}")
        started = time.monotonic()
        stdout = open(self.data_dir / "broker.stdout", "ab")
        self._process = subprocess.Popen(
            self._java(classpath, "kafka.Kafka", str(config)),
            stdout=stdout,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        stdout.close()
        self._wait_ready(started + timeout_s)
        self.startup_s = time.monotonic() - started
        logger.info("Kafka %s ready at %s in %.1fs", kafka_version(), self.bootstrap, self.startup_s)
        return self

    def _wait_ready(self, deadline: float) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise LocalKafkaError(f"Kafka exited with {self._process.returncode}; see {self.log_file}")
            try:
                metadata = admin.list_topics(timeout=1.0)
                if metadata.brokers:
                    return
            except Exception:
                pass
        self.stop()
        raise LocalKafkaError(f"Kafka did not answer within the deadline; see {self.log_file}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (controlled shutdown), then SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("Kafka did not stop within %ss; killing it", timeout_s)
            process.kill()
            process.wait()

    def wait(self) -> int | None:
        """Block until the broker exits (foreground use); returns its exit code."""
        return self._process.wait() if self._process is not None else None

    def __enter__(self) -> LocalKafka:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # `python -m streams.local_kafka`: fetch the jars ahead of time
    logging.basicConfig(level=logging.INFO)
    print(provision())
