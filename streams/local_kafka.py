"""A real Apache Kafka broker (KRaft, single combined node) run from Maven Central jars.

Used when there is no ``KAFKA_BOOTSTRAP`` and no Docker engine. The version is pinned in
``docker/kafka/pom.xml``; Maven resolves the classpath once, then the storage is formatted,
``kafka.Kafka`` started with ``java`` and stopped with SIGTERM. The JVM dies with the Python
process that started it, even after ``kill -9``.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from streams.errors import JobstreamError
from streams.kafka_config import ROLES, KafkaSecurity, SaslLogin
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
    return free_ports(1)[0]


def free_ports(count: int, avoid: frozenset[int] = frozenset()) -> list[int]:
    """``count`` distinct ports free now, none in ``avoid``. The sockets stay bound until all are
    chosen: two picks one after the other can get the same port (the kernel hands a just-closed
    one out again), and a broker whose two listeners share a port does not start."""
    held: list[socket.socket] = []
    try:
        ports: list[int] = []
        while len(ports) < count:
            sock = socket.socket()
            held.append(sock)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


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


SCRAM = "SCRAM-SHA-512"
BROKER_CN = "jobstream-broker"  #: the broker's certificate name; its principal on the controller listener


def _escaped(pem: str) -> str:
    """A PEM block as one ``.properties`` value (Java reads ``\\n`` back as a line break)."""
    return pem.strip().replace("\n", "\\n")


def principal_name(role: str) -> str:
    """The SASL user of a role on the local secured broker."""
    return f"jobstream-{role}"


class LocalKafka:
    """One KRaft broker+controller on loopback; use as a context manager or start()/stop().

    ``security="sasl_ssl"``: clients get only a SASL_SSL listener (SCRAM-SHA-512) with a certificate
    from a CA generated at each start (``<data_dir>/security``); every role in ``ROLES`` has its own
    SCRAM user, created when the storage is formatted; ``StandardAuthorizer`` is on and only
    ``jobstream-admin`` (and the broker itself) are super users, so the roles need ACLs
    (``streams.acls.grant``). The controller listener stays on loopback, mutual TLS with the
    broker's certificate.
    """

    def __init__(
        self, data_dir: Path, port: int = 0, heap: str = "768m", log_level: str = "WARN", security: str = "plaintext"
    ) -> None:
        if security not in ("plaintext", "sasl_ssl"):
            raise ValueError(f"security must be plaintext or sasl_ssl, not {security!r}")
        self.data_dir = Path(data_dir).resolve()
        if port:
            self.port, (self.controller_port,) = port, free_ports(1, avoid=frozenset({port}))
        else:
            self.port, self.controller_port = free_ports(2)
        self.heap = heap
        self.log_level = log_level
        self.secured = security == "sasl_ssl"
        self._process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._passwords: dict[str, str] = {}

    @property
    def security_dir(self) -> Path:
        return self.data_dir / "security"

    @property
    def ca_file(self) -> Path:
        """The CA clients trust (sasl_ssl only; regenerated at each start)."""
        return self.security_dir / "ca.pem"

    def client_security(self) -> KafkaSecurity:
        """How clients reach this broker; without a login: each client picks its role (``role_logins``)."""
        if not self.secured:
            return KafkaSecurity()
        return KafkaSecurity(protocol="SASL_SSL", mechanism=SCRAM, ca_location=self.ca_file)

    def role_logins(self) -> dict[str, SaslLogin]:
        """Each role's SCRAM login (empty for a plaintext broker)."""
        return {role: SaslLogin(principal_name(role), SecretStr(pw)) for role, pw in self._passwords.items()}

    def _load_passwords(self, formatted: bool) -> None:
        """SCRAM users are created at format time: a formatted data dir keeps its passwords (0600 file)."""
        path = self.security_dir / "users.json"
        if formatted and path.exists():
            self._passwords = json.loads(path.read_text())
            return
        if formatted:
            raise LocalKafkaError(
                f"{self.data_dir} was formatted without SCRAM users (a plaintext broker): "
                "use another data dir for the secured broker, or delete this one"
            )
        self._passwords = {role: secrets.token_urlsafe(24) for role in ROLES}
        self.security_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump(self._passwords, file)

    def _security_props(self) -> dict[str, str]:
        from streams.certs import LocalCA

        issued = LocalCA(self.security_dir).issue(BROKER_CN, ["localhost", "127.0.0.1"], client=True)
        # A PEM key store given inline: Java reads an unencrypted PKCS#8 key there, while a key store *file*
        # must hold an encrypted key in one of the legacy PBE schemes Java knows (not PBES2).
        key_store = {
            "ssl.keystore.type": "PEM",
            "ssl.keystore.key": _escaped(issued.key.read_text()),
            "ssl.keystore.certificate.chain": _escaped(issued.cert.read_text() + issued.ca.read_text()),
        }
        admin = principal_name("admin")
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{self.port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            f"listener.name.sasl_ssl.{SCRAM.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{admin}" password="{self._passwords["admin"]}";'
            ),
            **key_store,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(issued.ca),
            "ssl.endpoint.identification.algorithm": "https",
            "listener.name.controller.ssl.client.auth": "required",
            "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{admin};User:{BROKER_CN}",
            "allow.everyone.if.no.acl.found": "false",
        }

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
        if self.secured:
            props |= self._security_props()
        path = self.data_dir / "server.properties"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the admin's password
        with os.fdopen(fd, "w") as file:
            file.write("".join(f"{k}={v}\n" for k, v in props.items()))
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

    def start(self, timeout_s: float = 180.0) -> LocalKafka:
        """Format (once) and start the broker; ready when it answers metadata, failing after ``timeout_s``
        (generous: on a loaded 2-core machine a JVM, TLS included, can take a minute or more)."""
        classpath = provision()
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        if self.secured:
            self._load_passwords(formatted)
        config = self._write_config()
        if not formatted:
            cluster_id = new_cluster_id()
            users = [
                arg
                for role, password in self._passwords.items()
                for arg in ("--add-scram", f"{SCRAM}=[name={principal_name(role)},password={password}]")
            ]
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
                    *users,
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
        login = self.role_logins().get("admin")
        security = self.client_security()
        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "log_level": 0,
                **(dataclasses.replace(security, login=login).librdkafka() if login else {}),
            }
        )
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
