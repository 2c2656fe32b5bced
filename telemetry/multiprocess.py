"""prometheus-client's multiprocess mode: several processes, one scrape.

Under ``jobstream up`` the API process, its workers and their calculation processes each write
their metrics to memory-mapped files in one directory (``PROMETHEUS_MULTIPROC_DIR``), and the
API's ``GET /metrics`` adds them up. The library reads that variable when it is first imported,
so ``use_directory`` runs before anything imports ``prometheus_client`` (hence no import of it
at the top of this module), and children inherit it through their environment.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"^gauge_live\w+_(\d+)\.db$")


def directory() -> Path | None:
    """The multiprocess directory this process writes to; None: metrics live in this process only."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def use_directory(path: Path) -> Path:
    """Put this process and every process it starts later into multiprocess mode, writing under ``path``
    (emptied first: files of an earlier run would be added to this run's counts).

    Raises ``RuntimeError`` when ``prometheus_client`` was already imported without it: that
    process's metrics would silently stay out of the scrape.
    """
    path = path.resolve()
    if "prometheus_client.values" in sys.modules and directory() != path:
        raise RuntimeError(f"prometheus_client was imported before {ENV} was set; set it first")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[ENV] = str(path)
    return path


def reap_dead(path: Path) -> int:
    """Drop the live gauges (open SSE streams, replays running...) of processes that are gone, e.g. a
    worker or calculation process that crashed and was replaced; counters and histograms of dead
    processes stay, so totals never go backwards. Returns how many processes were reaped."""
    from prometheus_client import multiprocess

    dead = set()
    for entry in os.scandir(path):
        match = _LIVE_FILE.match(entry.name)
        if match and not _alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return len(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet waited for) is gone too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
    except (OSError, IndexError):
        return True
