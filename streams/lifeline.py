"""Child processes that end with the process that started them, even after its ``kill -9``.

Two mechanisms, because each alone leaves a gap: ``die_with_parent`` (Linux
``PR_SET_PDEATHSIG``, set between fork and exec; fires when the parent *thread* exits) and
``watch_parent`` (a thread in the child that asks for a graceful stop once ``getppid()``
changes, and ``os._exit``s after ``grace_s`` whatever that stop still waits for).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 70  # EX_SOFTWARE: the graceful stop did not finish in time


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel for ``sig`` when our parent (thread) exits; a no-op where ``prctl`` is missing.

    Call it in the child, e.g. ``Popen(..., preexec_fn=die_with_parent)``, from a thread that
    outlives the child (the signal follows the spawning thread, not the process).
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        pass


def kill_with_parent() -> None:
    """``die_with_parent(SIGKILL)``: for children with nothing to clean up (a ``preexec_fn``)."""
    die_with_parent(signal.SIGKILL)


def watch_parent(parent_pid: int, grace_s: float, poll_s: float = 0.1) -> threading.Thread:
    """Stop this process soon after ``parent_pid`` is gone: SIGTERM to itself, ``os._exit`` ``grace_s`` later."""

    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        logger.warning("parent process %d is gone: stopping, at most %.1fs", parent_pid, grace_s)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        logger.warning("graceful stop took longer than %.1fs after the parent died: exiting now", grace_s)
        os._exit(EXIT_ORPHANED)

    thread = threading.Thread(target=run, name="parent-watch", daemon=True)
    thread.start()
    return thread
