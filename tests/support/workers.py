"""Real processor workers for tests: ``jobstream worker`` processes started as ``jobstream up``
starts them (``jobstream.workers``), and fresh topics per scenario.

Workers of ``isolated`` scenarios load the misbehaving test calculations of ``tests/calc_plugin.py``.
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from pathlib import Path

from jobstream.workers import worker_command, worker_env
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support import ROOT

PLUGIN = "tests.calc_plugin"


class Worker:
    """A real ``jobstream worker`` in its own process, configured from every field of its Settings."""

    def __init__(
        self, settings: Settings, index: int = 0, log: Path | None = None, kafka: KafkaConnection | None = None
    ) -> None:
        self.settings = settings
        self.kafka = kafka  # a secured broker's connection: the worker logs in as the worker role
        self.index = index
        self.log = log or settings.data_dir / f"worker-{index}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                worker_command(self.index),
                env=worker_env(self.settings, self.kafka),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
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

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def isolated(settings: Settings, **overrides: object) -> Settings:
    """Fresh topics and local state for one scenario, everything else from the session settings."""
    tag = uuid.uuid4().hex[:8]
    values: dict[str, object] = {
        "topic_prefix": f"{settings.topic_prefix}p{tag}.",
        "data_dir": Path(settings.data_dir) / f"proc-{tag}",
        "plugins": PLUGIN,
        "calc_processes": 2,
        "batch_max_size": 16,
        "batch_max_wait_ms": 20,
        "retry_backoff_ms": 50,
        "retry_backoff_max_ms": 200,
        "timeout_grace_s": 0.5,
        "worker_session_timeout_s": 6.0,
        **overrides,
    }
    scoped = settings.model_copy(update=values)
    ensure_topics(KafkaConnection.from_settings(scoped), scoped)
    return scoped
