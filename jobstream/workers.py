"""How a ``jobstream worker`` process is started: its command line and its environment.

``jobstream up`` starts its workers with these, and so do the tests (tests/support/workers.py):
a worker always runs with the Settings of whoever started it, built in one place.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from streams.kafka_config import ROLE_CREDENTIALS_ENV, KafkaConnection
from streams.settings import Settings


def worker_env(
    settings: Settings, kafka: KafkaConnection | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a worker running with ``settings`` against ``kafka`` (default: the
    settings' cluster): ``base`` (default: this process's environment) with every setting over it."""
    env = {**(os.environ if base is None else base), **settings.env()}
    if kafka is not None:  # the address, TLS files and the worker principal's login (and no other role's)
        env.pop(ROLE_CREDENTIALS_ENV, None)
        env.update(kafka.for_role("worker").env())
    return env


def worker_command(index: int, parent_pid: int | None = None) -> list[str]:
    """``jobstream worker`` with this interpreter; ``parent_pid``: exit when that process dies."""
    command = [sys.executable, "-m", "jobstream.cli", "worker", "--index", str(index)]
    return command + (["--parent-pid", str(parent_pid)] if parent_pid is not None else [])
