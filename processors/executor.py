"""Calculations run here, in a process pool, never on the worker's event loop.

``run_batch`` is what a pool process executes for one batch of one kind. It
validates params, calls the calculation once for the whole batch and returns one
``Outcome`` per job. Progress travels back through a multiprocessing queue that
the worker drains on a thread (throttled here to ``PROGRESS_INTERVAL_S`` per job).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from processors.calculations import registry

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress reports per job per second

_progress_queue: Any = None


@dataclass(frozen=True)
class Outcome:
    job_id: str
    ok: bool
    result: Any = None
    error: dict[str, str] | None = None
    calc_version: str = ""


def _init_pool(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue
    registry.load_plugins()


def create_pool(processes: int, progress_queue: Any) -> ProcessPoolExecutor:
    """A spawn-based pool (no fork of a process that runs Kafka client threads)."""
    return ProcessPoolExecutor(
        max_workers=processes or os.cpu_count() or 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_pool,
        initargs=(progress_queue,),
    )


def _error(kind: str, message: str) -> dict[str, str]:
    return {"type": kind, "message": message}


def run_batch(kind: str, job_ids: list[str], params: list[dict[str, Any]]) -> list[Outcome]:
    """Validate, then run the calculation once on every valid job of the batch."""
    try:
        calc = registry.get(kind)
    except registry.UnknownKind:
        return [Outcome(j, False, error=_error("unknown_kind", f"no calculation {kind!r}")) for j in job_ids]
    outcomes: dict[int, Outcome] = {}
    valid: list[tuple[int, Any]] = []
    for index, (job_id, raw) in enumerate(zip(job_ids, params)):
        try:
            valid.append((index, calc.validate(raw)))
        except ValidationError as exc:
            outcomes[index] = Outcome(job_id, False, error=_error("invalid_params", str(exc)), calc_version=calc.version)
    last_report: dict[int, float] = {}

    def progress(batch_index: int, fraction: float) -> None:
        now = time.monotonic()
        if _progress_queue is None or now - last_report.get(batch_index, 0.0) < PROGRESS_INTERVAL_S:
            return
        last_report[batch_index] = now
        _progress_queue.put((job_ids[valid[batch_index][0]], min(max(fraction, 0.0), 1.0)))

    if valid:
        try:
            results = calc.fn([p for _, p in valid], progress)
            if len(results) != len(valid):
                raise RuntimeError(f"{kind} returned {len(results)} results for {len(valid)} jobs")
            for (index, _), result in zip(valid, results):
                outcomes[index] = Outcome(job_ids[index], True, result=result, calc_version=calc.version)
        except registry.CalculationError as exc:
            for index, _ in valid:
                outcomes[index] = Outcome(job_ids[index], False, error=_error("calculation_error", str(exc)),
                                          calc_version=calc.version)
    return [outcomes[i] for i in range(len(job_ids))]
