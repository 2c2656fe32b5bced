"""Polling for a condition with a deadline: how tests wait on real processes, brokers and stores."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], timeout_s: float = 30.0, poll_interval_s: float = 0.05, message: str = "condition"
) -> object:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")
        time.sleep(poll_interval_s)
