"""``jobstream up`` / ``jobstream serve`` in a process of their own, for tests that kill and restart them.

The process binds port 0 on its first start; its port is read from ``/proc`` (the one
listening socket it holds) and reused on restarts, so a browser's ``EventSource``
reconnects to the same URL. Each service gets its own chDB dir and data dir (one process
per chDB dir: a restart reopens the same dir after the previous process is gone).
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import ROOT
from tests.support.waiting import wait_until


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in {"Z", "X"}


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (children, grandchildren...), from ``/proc``."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return {p for p in found if alive(p)}


def listening_ports(pid: int) -> set[int]:
    """TCP ports ``pid`` listens on (its sockets matched against /proc/<pid>/net/tcp*)."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        ports = set()
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        return ports
    except (FileNotFoundError, ProcessLookupError):
        return set()


class ServiceProcess:
    """``python -m jobstream.cli <args>`` with ``env``; ``start``/``kill9``/``stop``, same port across restarts.
    Output goes to ``log``; with ``stderr``, standard error goes there instead."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        stderr: Path | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        """``verify``: the service serves HTTPS (JOBSTREAM_TLS_CERTFILE in ``env``), checked with this context."""
        self.args = args
        self.env = env
        self.log = log
        self.stderr = stderr
        self.verify = verify
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def url(self) -> str:
        return f"{'https' if self.verify else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 120) -> ServiceProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log, open(self.stderr or os.devnull, "ab") as errors:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jobstream.cli", *self.args],
                cwd=ROOT,
                stdout=log,
                stderr=errors if self.stderr else subprocess.STDOUT,
                env={**self.env, "JOBSTREAM_PORT": str(self.port)},
            )
        if not self.port:
            self.port = wait_until(
                lambda: self._exited() or next(iter(listening_ports(self.pid)), None),
                timeout_s,
                0.1,
                message=f"jobstream {self.args[0]} to listen",
            )
        wait_until(self._healthy, timeout_s, 0.1, message=f"jobstream {self.args[0]} to be ready")
        return self

    def _exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"jobstream {self.args[0]} exited with {self.process.returncode}:\n{self.tail()}")

    def _healthy(self) -> bool:
        self._exited()
        try:
            return httpx.get(f"{self.url}/healthz", timeout=5, verify=self.verify or True).status_code == 200
        except httpx.TransportError:
            return False

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def service_env(bootstrap: str, topic_prefix: str, home: Path, **settings: str) -> dict[str, str]:
    """Environment of a service with its own chDB dir and data dir under ``home``, on the session's broker."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP": bootstrap,
        "JOBSTREAM_TOPIC_PREFIX": topic_prefix,
        "CLICKHOUSE_URL": f"chdb://{home / 'clickhouse'}",
        "JOBSTREAM_DATA_DIR": str(home / "data"),
        **{f"JOBSTREAM_{name.upper()}": value for name, value in settings.items()},
    }
