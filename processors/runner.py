"""Turns one batch of job requests into events: running → progress → succeeded | failed.

The batch is grouped by kind and each group goes to the process pool as ONE
call (faust#631: never one pool call per event). ``emit`` publishes an event and
returns an awaitable that resolves when Kafka acknowledged it; the runner waits
for every terminal event's ack before returning, so the source offsets are
committed only after the outcome is durable (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import defaultdict
from concurrent.futures import Executor
from typing import Any, Awaitable, Callable

from processors.executor import Outcome, run_batch
from streams.events import EventType, JobEvent, JobRequested, load_request

logger = logging.getLogger(__name__)

# Hands an event to the Kafka producer (in call order) and returns its delivery future.
Emit = Callable[[JobEvent], Awaitable["asyncio.Future[Any]"]]


class _JobSeq:
    """Next seq per job in flight (queued was seq 0, written by the API)."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def take(self, job_id: str) -> int:
        seq = self._next.get(job_id, 1)
        self._next[job_id] = seq + 1
        return seq

    def forget(self, job_id: str) -> None:
        self._next.pop(job_id, None)


class BatchRunner:
    def __init__(self, pool: Executor, emit: Emit, progress_queue: Any) -> None:
        self._pool = pool
        self._emit = emit
        self._seq = _JobSeq()
        self._in_flight: dict[str, JobRequested] = {}
        self._progress_queue = progress_queue
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[asyncio.Future[Any]] = []
        self._outbox: asyncio.Queue[tuple[JobEvent, asyncio.Future[Any]]] = asyncio.Queue()

    async def start(self) -> None:
        """Start the ordered sender and the pump for progress reports from pool processes."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._sender_task = asyncio.ensure_future(self._send_in_order())
        threading.Thread(target=self._pump, name="progress-pump", daemon=True).start()

    async def _send_in_order(self) -> None:
        """One sender, so one job's events reach the producer in seq order."""
        while True:
            event, done = await self._outbox.get()
            try:
                delivery = await self._emit(event)
            except Exception as exc:
                done.set_exception(exc)
                continue
            delivery.add_done_callback(lambda d, done=done: _copy_result(d, done))

    def _pump(self) -> None:
        while True:
            try:
                item = self._progress_queue.get()
            except (EOFError, OSError):
                return
            if item is None:
                return
            job_id, fraction = item
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._progress, job_id, fraction)

    def _progress(self, job_id: str, fraction: float) -> None:
        request = self._in_flight.get(job_id)
        if request is not None:
            self._pending.append(self._event(request, EventType.PROGRESS, {"progress": fraction}))

    def _event(self, request: JobRequested, type_: EventType, data: dict[str, Any]) -> asyncio.Future[Any]:
        """Queue an event for sending; the future resolves when Kafka acknowledged it."""
        event = JobEvent(
            job_id=request.job_id, tenant=request.tenant, seq=self._seq.take(request.job_id),
            type=type_, kind=request.kind, data=data,
        )
        assert self._loop is not None
        done: asyncio.Future[Any] = self._loop.create_future()
        self._outbox.put_nowait((event, done))
        return done

    async def run(self, raw_batch: list[bytes]) -> None:
        requests: list[JobRequested] = []
        for raw in raw_batch:
            try:
                requests.append(load_request(raw))
            except ValueError:
                logger.error("dropping undecodable request (%d bytes)", len(raw))
        by_kind: dict[str, list[JobRequested]] = defaultdict(list)
        for request in requests:
            by_kind[request.kind].append(request)
        await asyncio.gather(*(self._run_kind(kind, group) for kind, group in by_kind.items()))

    async def _run_kind(self, kind: str, group: list[JobRequested]) -> None:
        started = []
        for request in group:
            self._in_flight[request.job_id] = request
            started.append(self._event(request, EventType.RUNNING, {"attempt": 1, "batch_size": len(group)}))
            started.append(self._event(request, EventType.PROGRESS, {"progress": 0.0}))
        await asyncio.gather(*started)
        loop = asyncio.get_running_loop()
        try:
            outcomes: list[Outcome] = await loop.run_in_executor(
                self._pool, run_batch, kind, [r.job_id for r in group], [r.params for r in group]
            )
        except Exception as exc:  # the pool process crashed or the calculation raised
            logger.exception("batch of %d %s jobs failed", len(group), kind)
            error = {"type": "internal_error", "message": f"{type(exc).__name__}: {exc}"}
            outcomes = [Outcome(r.job_id, False, error=error) for r in group]
        finals = []
        for request, outcome in zip(group, outcomes):
            self._in_flight.pop(request.job_id, None)
            if outcome.ok:
                data = {"result": outcome.result, "calc_version": outcome.calc_version, "attempt": 1}
                finals.append(self._event(request, EventType.PROGRESS, {"progress": 1.0}))
                finals.append(self._event(request, EventType.SUCCEEDED, data))
            else:
                finals.append(self._event(request, EventType.FAILED, {"error": outcome.error, "attempt": 1}))
            self._seq.forget(request.job_id)
        pending, self._pending = self._pending, []
        await asyncio.gather(*finals, *pending)
        logger.info("batch done", extra={"kind": kind, "batch_size": len(group)})


def _copy_result(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())  # type: ignore[arg-type]
    else:
        target.set_result(source.result())
