"""The calculation processes of one worker: CPU work never runs on the event loop.

Our own small pool instead of ``ProcessPoolExecutor``, which cannot kill ONE process whose job
blew its timeout, tell which batch a dead process ran, or cancel a running job. Each slot is a
spawned process and a duplex pipe whose reader thread turns messages and EOF into callbacks on
the loop; processes are spawned from the loop thread and die with the worker.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.reduction import ForkingPickler
from typing import Any

from processors.executor import JobSpec, Outcome, child_main
from streams.errors import JobstreamError
from telemetry import metrics

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 0.25
READY_TIMEOUT_S = 120.0
# A batch this small is written to the pipe from the loop: the process is idle in recv() (its slot was
# free), and the socket buffer takes it whole, so the write never waits. Bigger ones go through a thread.
# Pickling holds the GIL either way.
INLINE_SEND_BYTES = 64 * 1024


class ProcessDied(JobstreamError):
    """The calculation process running a batch died (crashed, or was killed for ``timed_out`` jobs)."""

    def __init__(self, exitcode: int | None, timed_out: set[str]) -> None:
        super().__init__(f"calculation process died (exit code {exitcode})")
        self.exitcode = exitcode
        self.timed_out = timed_out


@dataclass(eq=False)
class _Call:
    id: int
    jobs: Sequence[JobSpec]
    deadlines: dict[str, float]  # job id → monotonic hard limit
    future: asyncio.Future[list[Outcome]]
    sent: bool = False
    pending_cancels: set[str] = field(default_factory=set)
    timed_out: set[str] = field(default_factory=set)


@dataclass(eq=False)
class _Slot:
    index: int
    process: Any = None
    conn: Any = None
    ready: asyncio.Future[None] | None = None
    call: _Call | None = None
    generation: int = 0
    early_deaths: int = 0  # deaths before the process said it was ready, in a row


class CalcPool:
    """``size`` calculation processes; ``acquire`` a free slot, ``run`` a batch on it, ``release`` it."""

    def __init__(
        self,
        size: int,
        *,
        plugins: Sequence[str] = (),
        grace_s: float = 5.0,
        on_progress: Callable[[str, float], None] | None = None,
    ) -> None:
        self.size = size or os.cpu_count() or 1
        self._plugins = list(plugins)
        self._grace_s = grace_s
        self._on_progress = on_progress or (lambda job_id, fraction: None)
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(self.size)]
        self._free: asyncio.Queue[_Slot] = asyncio.Queue()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._closing = False
        self.restarts = 0

    async def start(self) -> CalcPool:
        self._loop = asyncio.get_running_loop()
        for slot in self._slots:
            self._spawn(slot)
            self._free.put_nowait(slot)
        await asyncio.gather(
            *(asyncio.wait_for(asyncio.shield(s.ready), READY_TIMEOUT_S) for s in self._slots if s.ready)
        )
        self._watchdog = asyncio.ensure_future(self._watch())
        logger.info("calculation pool ready", extra={"processes": self.size})
        return self

    @property
    def busy(self) -> int:
        return sum(1 for s in self._slots if s.call is not None)

    @property
    def idle(self) -> int:
        """Slots nobody has acquired."""
        return self._free.qsize()

    async def acquire(self) -> _Slot:
        return await self._free.get()

    def release(self, slot: _Slot) -> None:
        self._free.put_nowait(slot)

    async def run(
        self,
        slot: _Slot,
        kind: str,
        jobs: Sequence[JobSpec],
        deadlines: dict[str, float] | None = None,
        version: str | None = None,
    ) -> list[Outcome]:
        """Run one batch of ``kind`` (at ``version``; None: current) on ``slot``;
        raises ``ProcessDied`` if its process dies meanwhile."""
        assert self._loop is not None
        if slot.ready is not None and not slot.ready.done():
            await asyncio.wait_for(asyncio.shield(slot.ready), READY_TIMEOUT_S)
        call = _Call(next(self._ids), jobs, deadlines or {}, self._loop.create_future())
        slot.call = call
        try:
            conn = slot.conn
            try:
                # plain tuples on the wire: pickling a dataclass per job costs more than the job's numbers
                payload = ForkingPickler.dumps(
                    ("run", call.id, kind, version, [(j.job_id, j.params, j.timeout_s) for j in jobs])
                )
                if len(payload) <= INLINE_SEND_BYTES:
                    conn.send_bytes(payload)
                else:
                    await asyncio.to_thread(conn.send_bytes, payload)
            except (OSError, ValueError):  # the pipe broke: the process is dead, the reader says so
                pass
            call.sent = True
            for job_id in call.pending_cancels:
                self._send_cancel(slot, job_id)
            return await call.future
        finally:
            slot.call = None

    def cancel(self, job_id: str) -> bool:
        """Ask the process running ``job_id`` to stop it at its next progress point."""
        for slot in self._slots:
            call = slot.call
            if call is not None and any(j.job_id == job_id for j in call.jobs):
                if call.sent:
                    self._send_cancel(slot, job_id)
                else:
                    call.pending_cancels.add(job_id)
                return True
        return False

    def running(self) -> set[str]:
        return {j.job_id for s in self._slots if s.call is not None for j in s.call.jobs}

    async def close(self, timeout_s: float = 5.0) -> None:
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        for slot in self._slots:
            try:
                slot.conn.send(None)
            except (OSError, ValueError, AttributeError):
                pass
        deadline = time.monotonic() + timeout_s
        for slot in self._slots:
            if slot.process is not None:
                await asyncio.to_thread(slot.process.join, max(0.1, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    await asyncio.to_thread(slot.process.join, 2)

    # --- processes ------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        assert self._loop is not None
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=child_main,
            args=(child, self._plugins, os.getpid()),
            name=f"jobstream-calc-{slot.index}",
            daemon=True,
        )
        process.start()
        child.close()
        slot.generation += 1
        slot.process, slot.conn, slot.ready = process, parent, self._loop.create_future()
        threading.Thread(
            target=self._read, args=(slot, parent, slot.generation), name=f"calc-reader-{slot.index}", daemon=True
        ).start()

    def _read(self, slot: _Slot, conn: Any, generation: int) -> None:
        """Reader thread: forwards one process's messages to the loop until its pipe closes."""
        loop = self._loop
        assert loop is not None
        try:
            while True:
                message = conn.recv()
                kind = message[0]
                if kind == "progress":
                    loop.call_soon_threadsafe(self._on_progress, message[1], message[2])
                elif kind == "done":
                    outcomes = [Outcome(*fields) for fields in message[2]]
                    loop.call_soon_threadsafe(self._done, slot, message[1], outcomes)
                elif kind == "ready":
                    loop.call_soon_threadsafe(self._ready, slot, generation)
        except (EOFError, OSError):
            pass
        except RuntimeError:  # the loop is closed: the worker is shutting down
            return
        try:
            loop.call_soon_threadsafe(self._died, slot, generation)
        except RuntimeError:
            pass

    def _ready(self, slot: _Slot, generation: int) -> None:
        if slot.generation == generation and slot.ready is not None and not slot.ready.done():
            slot.early_deaths = 0
            slot.ready.set_result(None)

    def _done(self, slot: _Slot, call_id: int, outcomes: list[Outcome]) -> None:
        call = slot.call
        if call is not None and call.id == call_id and not call.future.done():
            call.future.set_result(outcomes)

    def _died(self, slot: _Slot, generation: int) -> None:
        if slot.generation != generation:
            return
        process = slot.process
        process.join(timeout=1)
        exitcode = process.exitcode
        call = slot.call
        if self._closing:
            if call is not None and not call.future.done():
                call.future.set_exception(ProcessDied(exitcode, set()))
            return
        logger.warning(
            "calculation process %d died with exit code %s",
            process.pid,
            exitcode,
            extra={"jobs": [j.job_id for j in call.jobs] if call else []},
        )
        self.restarts += 1
        if call is None or not call.timed_out:  # killed by the watchdog for a timeout: counted as a timeout
            metrics.CALC_CRASHES.inc()
        try:
            slot.conn.close()
        except OSError:
            pass
        if slot.ready is not None and not slot.ready.done():
            # It died while starting (a plugin that does not import, no memory): do not spin; back off.
            slot.early_deaths += 1
            delay = min(30.0, 0.5 * 2**slot.early_deaths)
            logger.error("calculation process died while starting (exit code %s); retrying in %.1fs", exitcode, delay)
            assert self._loop is not None
            self._loop.call_later(delay, self._respawn, slot, slot.generation)
        else:
            self._spawn(slot)
        if call is not None and not call.future.done():
            call.future.set_exception(ProcessDied(exitcode, set(call.timed_out)))

    def _respawn(self, slot: _Slot, generation: int) -> None:
        if not self._closing and slot.generation == generation:
            ready = slot.ready
            self._spawn(slot)
            if ready is not None and not ready.done() and slot.ready is not None:
                slot.ready.add_done_callback(partial(_settle, ready))

    def _send_cancel(self, slot: _Slot, job_id: str) -> None:
        try:
            slot.conn.send(("cancel", job_id))
        except (OSError, ValueError):
            pass

    async def _watch(self) -> None:
        """Hard timeouts: a job past its limit + grace without stopping gets its process killed."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            for slot in self._slots:
                call = slot.call
                if call is None or call.timed_out or not call.deadlines:
                    continue
                late = {job_id for job_id, limit in call.deadlines.items() if now > limit + self._grace_s}
                if late and slot.process is not None and slot.process.is_alive():
                    logger.warning(
                        "killing calculation process %d: jobs %s are past their timeout", slot.process.pid, sorted(late)
                    )
                    call.timed_out = late
                    slot.process.kill()


def _settle(ready: asyncio.Future[None], _done: asyncio.Future[None]) -> None:
    """Resolve a waiter of the old process once its replacement is ready."""
    if not ready.done():
        ready.set_result(None)
