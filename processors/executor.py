"""What a calculation process runs: one batch of one kind, one call, one outcome per job.

The child side of ``processors.pool``: no Kafka, no event loop. ``run_jobs`` validates params,
calls the calculation ONCE for the valid jobs and classifies each job (succeeded, failed,
transient, split, cancelled, timed_out, not_run; see ``Outcome``) so the worker decides what
follows. Cancellation and ``timeout_s`` are honoured at progress points, where the callback
raises; progress reports are throttled to ``PROGRESS_INTERVAL_S`` per job.
"""

from __future__ import annotations

import logging
import math
import os
import select
import signal
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
import orjson
from pydantic import ValidationError

from calculations import registry
from streams.lifeline import kill_with_parent
from telemetry import metrics, multiprocess

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25  # at most ~4 progress reports per job per second


class OutcomeStatus(StrEnum):
    """How one job of a batch ended in the calculation process (the module docstring says what follows)."""

    SUCCEEDED = "succeeded"  #: final, with the result
    FAILED = "failed"  #: final: bad params, unknown kind or version, ``CalculationError``, bad result
    TRANSIENT = "transient"  #: retried with backoff
    SPLIT = "split"  #: the batch raised as a whole: the worker runs its halves
    CANCELLED = "cancelled"  #: stopped at a progress point on request
    TIMED_OUT = "timed_out"  #: stopped at a progress point past ``timeout_s``
    NOT_RUN = "not_run"  #: a batch-mate stopped the call; run again as is


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    params: dict[str, Any]
    timeout_s: float | None = None  #: running time left; None: no limit


@dataclass(frozen=True)
class Outcome:
    job_id: str
    status: OutcomeStatus
    result: Any = None
    error: dict[str, str] | None = None
    calc_version: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OutcomeStatus.SUCCEEDED


class Control(Protocol):
    """How a running batch talks to its worker: progress out, cancellations in."""

    def progress(self, job_id: str, fraction: float) -> None: ...

    def cancelled(self) -> set[str]:
        """Job ids cancelled so far (reads pending commands)."""
        ...


@dataclass
class NoControl:
    """For running a batch in-process (tests, tools): records progress, never cancels."""

    reports: list[tuple[str, float]] = field(default_factory=list)
    cancel: set[str] = field(default_factory=set)

    def progress(self, job_id: str, fraction: float) -> None:
        self.reports.append((job_id, fraction))

    def cancelled(self) -> set[str]:
        return self.cancel


class _Stop(BaseException):
    """Raised from a progress point to stop the call for job ``index`` (``status`` says why).

    A BaseException, so a calculation's own ``except Exception`` does not swallow it.
    """

    def __init__(self, index: int, status: OutcomeStatus) -> None:
        super().__init__(status)
        self.index = index
        self.status = status


def error(type_: str, message: str) -> dict[str, str]:
    return {"type": type_, "message": message[:2000]}


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def run_batch(
    kind: str, job_ids: Sequence[str], params: Sequence[dict[str, Any]], control: Control | None = None
) -> list[Outcome]:
    """In-process convenience (tests, tools): ``run_jobs`` on ids and params, without time limits."""
    return run_jobs(kind, [JobSpec(j, p) for j, p in zip(job_ids, params, strict=False)], control or NoControl())


def run_jobs(kind: str, jobs: Sequence[JobSpec], control: Control, version: str | None = None) -> list[Outcome]:
    """Validate, run the calculation (``version``, default the current one) once on every valid job,
    and classify each job's outcome."""
    try:
        calc = registry.get(kind, version)
    except registry.UnknownKind:
        return [
            Outcome(j.job_id, OutcomeStatus.FAILED, error=error("unknown_kind", f"no calculation {kind!r}"))
            for j in jobs
        ]
    except registry.UnknownVersion as exc:
        return [Outcome(j.job_id, OutcomeStatus.FAILED, error=error("unknown_version", str(exc))) for j in jobs]
    outcomes: dict[int, Outcome] = {}
    valid: list[tuple[int, Any]] = []
    for index, job in enumerate(jobs):
        try:
            valid.append((index, calc.validate(job.params)))
        except ValidationError as exc:
            outcomes[index] = Outcome(
                job.job_id, OutcomeStatus.FAILED, error=error("invalid_params", str(exc)), calc_version=calc.version
            )
    if valid:
        for index, outcome in _run_valid(calc, [jobs[i] for i, _ in valid], [p for _, p in valid], control).items():
            outcomes[valid[index][0]] = outcome
    return [outcomes[i] for i in range(len(jobs))]


def _run_valid(
    calc: registry.Calculation, jobs: list[JobSpec], params: list[Any], control: Control
) -> dict[int, Outcome]:
    started = time.monotonic()
    deadlines = [started + j.timeout_s if j.timeout_s is not None else None for j in jobs]
    earliest = min((d for d in deadlines if d is not None), default=None)
    last_report = [started] * len(jobs)
    ids = [j.job_id for j in jobs]

    def progress(index: int, fraction: float) -> None:
        now = time.monotonic()
        cancelled = control.cancelled()
        if cancelled:
            for i, job_id in enumerate(ids):
                if job_id in cancelled:
                    raise _Stop(i, OutcomeStatus.CANCELLED)
        if earliest is not None and now > earliest:
            for i, deadline in enumerate(deadlines):
                if deadline is not None and now > deadline:
                    raise _Stop(i, OutcomeStatus.TIMED_OUT)
        # 0 is not news (`running` says it)
        if fraction > 0 and 0 <= index < len(ids) and now - last_report[index] >= PROGRESS_INTERVAL_S:
            last_report[index] = now
            control.progress(ids[index], min(max(float(fraction), 0.0), 1.0))

    def outcome(status: OutcomeStatus, index: int, exc: BaseException | None = None, type_: str = "") -> Outcome:
        err = error(type_, _describe(exc) if exc is not None else status) if type_ else None
        return Outcome(ids[index], status, error=err, calc_version=calc.version)

    def all_(status: OutcomeStatus, exc: BaseException, type_: str) -> dict[int, Outcome]:
        return {i: outcome(status, i, exc, type_) for i in range(len(ids))}

    def one(index: int | None, status: OutcomeStatus, exc: BaseException, type_: str) -> dict[int, Outcome] | None:
        if index is None or not 0 <= index < len(ids):
            return None
        return {
            i: outcome(status, i, exc, type_) if i == index else outcome(OutcomeStatus.NOT_RUN, i)
            for i in range(len(ids))
        }

    try:
        results = calc.fn(params, progress)
        if len(results) != len(params):
            raise RuntimeError(f"{calc.kind} returned {len(results)} results for {len(params)} jobs")
    except _Stop as stop:
        if stop.status == OutcomeStatus.CANCELLED:
            return (
                one(stop.index, OutcomeStatus.CANCELLED, RuntimeError("cancelled at a progress point"), "cancelled")
                or {}
            )
        return one(stop.index, OutcomeStatus.TIMED_OUT, TimeoutError("timeout_s exceeded"), "timeout") or {}
    except registry.CalculationError as exc:
        if len(ids) == 1:
            return all_(OutcomeStatus.FAILED, exc, "calculation_error")
        return one(exc.index, OutcomeStatus.FAILED, exc, "calculation_error") or all_(
            OutcomeStatus.SPLIT, exc, "calculation_error"
        )
    except registry.TransientError as exc:
        return one(exc.index, OutcomeStatus.TRANSIENT, exc, "transient_error") or all_(
            OutcomeStatus.TRANSIENT, exc, "transient_error"
        )
    except Exception as exc:  # a bug or a resource problem: isolate the job, then retry it
        logger.warning("%s batch of %d raised %s", calc.kind, len(ids), _describe(exc))
        if len(ids) == 1:
            return {
                0: Outcome(
                    ids[0],
                    OutcomeStatus.TRANSIENT,
                    error=error("internal_error", _describe(exc) + "\n" + traceback.format_exc(limit=5)),
                    calc_version=calc.version,
                )
            }
        return all_(OutcomeStatus.SPLIT, exc, "internal_error")
    done: dict[int, Outcome] = {}
    for index, result in enumerate(results):
        if not _all_finite(result):  # JSON has no inf/nan: it would read as a success with nulls
            done[index] = Outcome(
                ids[index],
                OutcomeStatus.FAILED,
                error=error(
                    "calculation_error", "the result is not finite (inf or nan: the input overflows the calculation)"
                ),
                calc_version=calc.version,
            )
            continue
        try:  # results must survive JSON: numpy scalars/arrays become plain numbers and lists
            plain = orjson.loads(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY))
            done[index] = Outcome(ids[index], OutcomeStatus.SUCCEEDED, result=plain, calc_version=calc.version)
        except TypeError as exc:
            done[index] = Outcome(
                ids[index], OutcomeStatus.FAILED, error=error("bad_result", _describe(exc)), calc_version=calc.version
            )
    return done


def _all_finite(value: Any) -> bool:
    """False if ``value`` holds an inf or nan anywhere (floats, numpy scalars and arrays, containers)."""
    if isinstance(value, float):  # numpy's float64 too
        return math.isfinite(value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind not in "fc" or bool(np.isfinite(value).all())
    if isinstance(value, np.inexact):
        return bool(np.isfinite(value))
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


# --- the calculation process ----------------------------------------------------


class _PipeControl:
    """Control over the process's pipe: progress goes out, cancel commands are read at progress points."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._cancelled: set[str] = set()

    def progress(self, job_id: str, fraction: float) -> None:
        self._conn.send(("progress", job_id, fraction))

    def cancelled(self) -> set[str]:
        while self._conn.poll():
            message = self._conn.recv()
            if message and message[0] == "cancel":
                self._cancelled.add(message[1])
        return self._cancelled


def _die_with_parent(parent_pid: int) -> None:
    """A worker killed with -9 must not leave calculation processes burning CPU (elsewhere than
    Linux we still exit at EOF on the pipe)."""
    kill_with_parent()
    if os.getppid() != parent_pid:
        os._exit(0)


def child_main(conn: Any, plugins: Sequence[str], parent_pid: int) -> None:
    """Entry point of a calculation process: run batches until told to stop or the worker is gone."""
    _die_with_parent(parent_pid)
    # Ctrl-C or a SIGTERM to the whole process group: the worker decides when its calculations end
    # (it finishes running batches first); it closes the pipe, and PR_SET_PDEATHSIG covers a kill -9.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    registry.load_plugins(plugins)
    # Only the multiprocess directory makes this process's values visible: otherwise they would die with it unread.
    record = multiprocess.directory() is not None
    conn.send(("ready", os.getpid()))
    flushed = time.monotonic()
    incoming = select.poll()  # Connection.poll builds a selector per call (~4 µs; this: ~0.5 µs)
    incoming.register(conn.fileno(), select.POLLIN)
    while True:
        if (
            record
            and metrics.tally
            and (not incoming.poll(metrics.FLUSH_S * 1000) or time.monotonic() - flushed >= metrics.FLUSH_S)
        ):  # idle for FLUSH_S, or busy that long: write the tallied values (a scrape sees them)
            metrics.flush()
            flushed = time.monotonic()
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None
        if message is None:
            if record:
                metrics.flush()
            return
        if message[0] == "run":
            _, call_id, kind, version, jobs = message  # jobs and outcomes travel as plain tuples (cheaper)
            started = time.perf_counter() if record else 0.0
            outcomes = run_jobs(kind, [JobSpec(*fields) for fields in jobs], _PipeControl(conn), version)
            ran_s = time.perf_counter() - started if record else 0.0
            conn.send(("done", call_id, [(o.job_id, o.status, o.result, o.error, o.calc_version) for o in outcomes]))
            if record:  # after the answer: the worker does not wait for it
                metrics.batch(kind, ran_s, len(jobs))
        # a "cancel" read here came after its batch ended: nothing to stop
