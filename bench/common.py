"""Shared bench plumbing: a real broker, a jobstream process, its CPU use, latency statistics."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from streams.broker import kafka_broker
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    values = np.asarray(latencies_s) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


@contextlib.contextmanager
def broker() -> Iterator[str]:
    """KAFKA_BOOTSTRAP if set, else a local broker for the bench's lifetime."""
    with broker_connection() as kafka:
        yield kafka.bootstrap


@contextlib.contextmanager
def broker_connection(security: str = "plaintext", settings: Settings | None = None) -> Iterator[KafkaConnection]:
    """Like ``broker``, as a connection: ``security="sasl_ssl"`` starts the local broker secured (SCRAM over
    TLS, each role with its ACLs for ``settings``' topics) so a bench can price transport security."""
    settings = (settings or Settings()).model_copy(update={"local_kafka_security": security})
    with tempfile.TemporaryDirectory(prefix="jobstream-bench-") as tmp:
        with kafka_broker(settings, data_dir=Path(tmp) / "kafka", port=0) as kafka:
            yield kafka


SECURITY_CHOICES = ("plaintext", "sasl_ssl")


def prepare(kafka: KafkaConnection, settings: Settings) -> None:
    """Topics for ``settings`` (as the admin principal) and, on a secured broker, every role's ACLs on them."""
    from streams.acls import grant_and_wait
    from streams.topics import ensure_topics

    ensure_topics(kafka.for_role("admin"), settings)
    if kafka.role_logins:
        grant_and_wait(kafka, settings)


@dataclass(frozen=True)
class Service:
    url: str
    pid: int


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) process ``pid`` has used so far, from Linux's /proc:
    dividing its growth by the wall time gives the cores a service really used during a run."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc children lists)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found.extend(kids)
            todo.extend(kids)
    return found


def broker_pids() -> list[int]:
    """The local broker (a JVM below this process), if any."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                found.append(pid)
        except OSError:
            continue
    return found


@contextlib.contextmanager
def jobstream_process(
    args: list[str], env: dict[str, str], port: int, timeout_s: float = 120, root: Path = ROOT
) -> Iterator[str]:
    """Run ``jobstream <args>`` as its own process until the block ends; yields its base URL."""
    with jobstream_service(args, env, port, timeout_s, root) as service:
        yield service.url


def code_env(root: Path) -> dict[str, str]:
    """Environment that makes a child process import jobstream from checkout ``root``.

    With ``--baseline`` a bench runs an older checkout's processes beside this one's, in one
    run on one broker: the only honest before/after on a noisy shared machine.
    """
    return {"PYTHONPATH": str(root)}


@contextlib.contextmanager
def jobstream_service(
    args: list[str], env: dict[str, str], port: int, timeout_s: float = 120, root: Path = ROOT
) -> Iterator[Service]:
    """Like ``jobstream_process``, but yields the process id too (for ``cpu_seconds``)."""
    with tempfile.TemporaryDirectory(prefix="jobstream-bench-") as tmp:
        full_env = {
            **os.environ,
            "JOBSTREAM_DATA_DIR": tmp,
            "CLICKHOUSE_URL": f"chdb://{tmp}/clickhouse",
            "JOBSTREAM_PORT": str(port),
            **code_env(root),
            **env,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "jobstream.cli", *args],
            env=full_env,
            cwd=root,
            stdout=subprocess.DEVNULL,
            stderr=open(Path(tmp) / "log", "wb"),
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(tmp) / "log").read_text()[-3000:])
                time.sleep(0.2)  # polling a starting server, bench only
            yield Service(url, process.pid)
        finally:
            process.terminate()
            process.wait(timeout=30)


def free_port() -> int:
    from streams.local_kafka import free_port as _free

    return _free()
