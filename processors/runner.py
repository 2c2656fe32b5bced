"""The worker's job lifecycle: from a request off Kafka to exactly one terminal event, then the ack.

``submit`` puts a request (undecodable → dead letter) into the ``Batcher``; the dispatcher
runs each batch as ONE call on the pool and the outcome decides what follows: a terminal event
then the ack (at-least-once), a ``retrying`` event with backoff, a halved batch (so a poison
job ends up alone), or after ``JOBSTREAM_CRASH_MAX`` crashes the dead-letter topic. Cancels
from ``jobs.control`` drop a waiting job or stop a running one at its next progress point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from calculations import registry
from processors.batching import Batcher, BatchPolicy
from processors.cancellation import CancelledJobs
from processors.dead_letters import CRASHED, UNDECODABLE, DeadLetters, Source
from processors.executor import JobSpec, Outcome, OutcomeStatus
from processors.outbox import Outbox
from processors.pool import CalcPool, ProcessDied
from processors.retry import RetryPolicy
from streams.control import CancelCommand
from streams.events import EventType, JobRequested, utcnow
from streams.settings import Settings
from streams.tenancy import TenantPolicies
from streams.wire import decode_request
from telemetry import metrics, tracing

logger = logging.getLogger(__name__)

Ack = Callable[[], Any]  # marks the request's Kafka record done (its offset may be committed)
Forget = Callable[[], Any]  # lets go of the record without acking it (it will be delivered again)


class PartitionFlow(Protocol):
    """Stops and restarts reading one partition (the Kafka consumer's pause/resume)."""

    def pause(self, topic: str, partition: int) -> None: ...

    def resume(self, topic: str, partition: int) -> None: ...


@dataclass(eq=False)
class Job:
    request: JobRequested
    raw: bytes
    acks: list[Ack]
    source: Source | None
    forgets: list[Forget]
    arrived: float
    attempt: int = 1
    crashes: int = 0
    started_at: float | None = None
    announced_attempt: int = 0  # the attempt a `running` event was sent for
    progress: float = 0.0
    finished: bool = False
    group: Hashable = None
    trace: tracing.JobTrace | None = None  # from the request's Kafka headers; its span runs start to terminal

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def deadline(self) -> float | None:
        """Monotonic time by which the job must be done (timeout_s counts from its first start)."""
        if self.request.timeout_s is None or self.started_at is None:
            return None
        return self.started_at + self.request.timeout_s

    @property
    def expired(self) -> bool:
        """Not started and past its deadline to start (``start_within_s`` from the submit, wall clock)."""
        within = self.request.start_within_s
        return self.started_at is None and within is not None and time.time() >= self.request.ts.timestamp() + within


@dataclass
class RunnerStats:
    batches: int = 0
    jobs_done: int = 0
    batch_sizes: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class RunnerConfig:
    """The runner's part of the settings."""

    batch: BatchPolicy
    retry: RetryPolicy
    max_pending: int  #: JOBSTREAM_WORKER_MAX_PENDING: jobs held before the worker stops reading
    crash_max: int  #: JOBSTREAM_CRASH_MAX: crashes of its process before a job is dead-lettered
    cancel_memory: int  #: JOBSTREAM_CANCEL_MEMORY: cancelled job ids remembered
    read_ahead: int = 1_000_000  #: JOBSTREAM_WORKER_PARTITION_READ_AHEAD: jobs held per partition before pausing it
    ageing_s: float = float("inf")  #: JOBSTREAM_PRIORITY_AGEING_S: a job held this long goes before younger ones
    tenants: TenantPolicies | None = None  #: tenants' weights (None: all equal)
    expiry_check_s: float = 1.0  #: JOBSTREAM_EXPIRY_CHECK_S: how often held jobs past start_within_s end

    @classmethod
    def from_settings(cls, settings: Settings) -> RunnerConfig:
        return cls(
            BatchPolicy.from_settings(settings),
            RetryPolicy.from_settings(settings),
            settings.worker_max_pending,
            settings.crash_max,
            settings.cancel_memory,
            settings.worker_partition_read_ahead,
            settings.priority_ageing_s,
            TenantPolicies.from_settings(settings),
            settings.expiry_check_s,
        )


class Runner:
    def __init__(
        self,
        config: RunnerConfig,
        pool: CalcPool,
        outbox: Outbox,
        dead_letters: DeadLetters,
        flow: PartitionFlow | None = None,
    ) -> None:
        self._config = config
        self._pool = pool
        self._outbox = outbox
        self._dead_letters = dead_letters
        self._retry = config.retry
        # The dispatcher holds one free slot while it plans: that one plus those still in the pool.
        self.batcher: Batcher[Job] = Batcher(config.batch, idle_slots=lambda: pool.idle + 1, ageing_s=config.ageing_s)
        self._tenants = config.tenants
        # Read-ahead per partition: a partition holding `read_ahead` jobs is paused, and resumed at half.
        self._flow = flow
        self.held: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self._resume_at = config.read_ahead // 2
        self.cancels = CancelledJobs(config.cancel_memory)
        self.jobs: dict[str, Job] = {}
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._metrics_flush: asyncio.Task[None] | None = None
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stats = RunnerStats()

    def start(self) -> Runner:
        self._dispatcher = asyncio.ensure_future(self._dispatch_forever())
        self._expiry = asyncio.ensure_future(self._expire_forever())
        if metrics.recording():
            self._metrics_flush = asyncio.ensure_future(self._flush_metrics_forever())
        return self

    async def _flush_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(metrics.FLUSH_S)  # a period, not a wait for something
            metrics.flush()

    async def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        if self._metrics_flush is not None:
            self._metrics_flush.cancel()
            metrics.flush()

    # --- intake ------------------------------------------------------------------------
    async def submit(
        self,
        raw: bytes,
        ack: Ack,
        source: Source | None = None,
        forget: Forget | None = None,
        headers: Any = None,
    ) -> None:
        """Take one request record; returns once there is room for more (backpressure). ``headers``: the
        record's Kafka headers, only when it has any (a trace context is looked for in them)."""
        while len(self.jobs) >= self._config.max_pending:
            self._room.clear()
            await self._room.wait()
        try:
            request = decode_request(raw)
        except ValueError as exc:
            self._spawn(self._undecodable(raw, ack, source, exc))
            return
        held = self.jobs.get(request.job_id)
        if held is not None:  # the same request twice (redelivery): one run, both records acked after it
            held.acks.append(ack)
            if forget is not None:
                held.forgets.append(forget)
            return
        job = Job(request, raw, [ack], source, [forget] if forget else [], time.monotonic())
        if headers:
            job.trace = tracing.from_kafka(headers)
            if job.trace is not None:
                self._outbox.traces[job.job_id] = job.trace
        if self.cancels.cancelled(request.job_id, request.tenant):
            self._finish(job, EventType.CANCELLED, _error("cancelled", "cancelled before it started"))
            return
        job.group = _group(request)
        self.jobs[job.job_id] = job
        if source is not None:
            self._hold(source)
        tenants = self._tenants
        weight = 1.0 if tenants is None else tenants.of(request.tenant).weight
        self.batcher.add(job, job.group, request.priority, tenant=request.tenant, weight=weight)

    def _hold(self, source: Source) -> None:
        """Count a held job against its partition; pause the partition at its read-ahead."""
        tp = (source.topic, source.partition)
        held = self.held[tp] = self.held.get(tp, 0) + 1
        if held >= self._config.read_ahead and self._flow is not None and tp not in self.paused:
            self.paused.add(tp)
            self._flow.pause(*tp)

    def _let_go(self, job: Job) -> None:
        """A held job is gone (finished, or dropped): its partition may be read again."""
        source = job.source
        if source is None:
            return
        tp = (source.topic, source.partition)
        held = self.held[tp] = self.held.get(tp, 1) - 1
        if held <= self._resume_at and tp in self.paused:
            self.paused.discard(tp)
            if self._flow is not None:
                self._flow.resume(*tp)

    def on_cancel(self, command: CancelCommand) -> None:
        """A cancel from jobs.control (on the loop): drop the job if it waits, stop it if it runs."""
        self.cancels.add(command.job_id, command.tenant)
        job = self.jobs.get(command.job_id)
        if job is None or job.request.tenant != command.tenant:
            return
        if self.batcher.remove_where(lambda j: j is job):
            self._finish(job, EventType.CANCELLED, _error("cancelled", command.reason or "cancelled on request"))
        else:
            self._pool.cancel(job.job_id)

    def on_progress(self, job_id: str, fraction: float) -> None:
        job = self.jobs.get(job_id)
        if job is not None and not job.finished and fraction > job.progress:
            job.progress = fraction
            self._outbox.emit(job.request, EventType.PROGRESS, {"progress": round(fraction, 6)})

    def drop_pending(self) -> int:
        """Partitions are being revoked: forget every job not yet running (Kafka delivers it again)."""
        dropped = self.batcher.clear()
        for job in dropped:
            if self.jobs.get(job.job_id) is job:
                del self.jobs[job.job_id]
                self._let_go(job)
            self._outbox.seqs.forget(job.job_id)
            if job.trace is not None:
                self._outbox.traces.pop(job.job_id, None)
                job.trace.end("dropped")
            for forget in job.forgets:
                forget()
        if dropped:
            logger.info("dropped %d pending jobs on rebalance", len(dropped))
        if self._flow is not None:  # read every partition again: what was held there is dropped
            for tp in self.paused:
                self._flow.resume(*tp)
        self.paused.clear()
        self._room.set()
        return len(dropped)

    def expire_held(self) -> int:
        """End the held jobs whose deadline to start passed (``start_within_s``): failed, ``expired``,
        never run. Without this they would end only when their turn comes (``_stopped_before_start``)."""
        late = [job for job in self.jobs.values() if not job.finished and job.expired]
        if not late:
            return 0
        late_ids = {id(job) for job in late}
        for job in self.batcher.remove_where(lambda j: id(j) in late_ids):
            self._finish(job, EventType.FAILED, _expired(job))
        return len(late)

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.expiry_check_s)
            try:
                self.expire_held()
            except Exception:  # a bug of ours must not stop the timer; jobs still expire at start
                logger.exception("expiring held jobs failed")

    # --- dispatch ----------------------------------------------------------------------
    async def _dispatch_forever(self) -> None:
        while True:
            slot = await self._pool.acquire()
            try:
                group, jobs = await self.batcher.next_batch()
            except BaseException:
                self._pool.release(slot)
                raise
            self._spawn(self._run_batch(slot, group, jobs))

    async def _run_batch(self, slot: Any, group: Hashable, jobs: list[Job]) -> None:
        try:
            await self._run_on_slot(slot, group, jobs)
        except Exception:  # a bug of ours: never lose the jobs, run them again
            logger.exception("batch handling failed; requeueing %d jobs", len(jobs))
            for job in jobs:
                if not job.finished:
                    self.batcher.add(job, job.group, job.request.priority, delay_s=1.0, count_arrival=False)
        finally:
            self._pool.release(slot)

    async def _run_on_slot(self, slot: Any, group: Hashable, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not self._stopped_before_start(job)]
        if not jobs:
            return
        kind = jobs[0].request.kind
        now = time.monotonic()
        record = metrics.recording()
        wall = time.time() if record else 0.0
        specs = []
        for job in jobs:
            if job.started_at is None:
                job.started_at = now
                if record:
                    metrics.queue_wait(kind, wall - job.request.ts.timestamp())
            if job.announced_attempt != job.attempt:
                if job.trace is not None and job.announced_attempt == 0:
                    job.trace.start(
                        "jobstream.job",
                        attributes={
                            "jobstream.job_id": job.job_id,
                            "jobstream.tenant": job.request.tenant,
                            "jobstream.kind": kind,
                            "jobstream.batch_size": len(jobs),
                            "jobstream.worker": self.name,
                        },
                    )
                self._outbox.emit(
                    job.request,
                    EventType.RUNNING,
                    {"attempt": job.attempt, "batch_size": len(jobs), "worker": self.name},
                )
                job.announced_attempt = job.attempt
            deadline = job.deadline
            specs.append(JobSpec(job.job_id, job.request.params, None if deadline is None else deadline - now))
        deadlines = {job.job_id: job.deadline for job in jobs if job.deadline is not None}
        started = time.monotonic()
        try:
            outcomes = await self._pool.run(slot, kind, specs, deadlines, version=jobs[0].request.calc_version)
        except ProcessDied as died:
            await self._after_death(slot, group, jobs, died)
            return
        self.batcher.observe(group, len(jobs), time.monotonic() - started)
        self.stats.batches += 1
        self.stats.batch_sizes.append(len(jobs))
        del self.stats.batch_sizes[:-1000]
        again: list[Job] = []
        split: list[Job] = []
        for job, outcome in zip(jobs, outcomes, strict=False):
            if outcome.status == OutcomeStatus.NOT_RUN:
                again.append(job)
            elif outcome.status == OutcomeStatus.SPLIT:
                split.append(job)
            else:
                self._settle(job, outcome)
        if again:
            await self._run_on_slot(slot, group, again)
        for half in _halves(split):
            await self._run_on_slot(slot, group, half)

    def _settle(self, job: Job, outcome: Outcome) -> None:
        attempt = {"attempt": job.attempt}
        if outcome.status == OutcomeStatus.SUCCEEDED:
            self._finish(
                job, EventType.SUCCEEDED, {"result": outcome.result, "calc_version": outcome.calc_version, **attempt}
            )
        elif outcome.status == OutcomeStatus.CANCELLED:
            self._finish(job, EventType.CANCELLED, {"error": outcome.error, **attempt})
        elif outcome.status == OutcomeStatus.TRANSIENT:
            self._retry_or_fail(job, outcome.error or _error("transient_error", "transient failure")["error"])
        else:  # failed, timed_out
            self._finish(job, EventType.FAILED, {"error": outcome.error, **attempt})

    async def _after_death(self, slot: Any, group: Hashable, jobs: list[Job], died: ProcessDied) -> None:
        late = [job for job in jobs if job.job_id in died.timed_out]
        for job in late:
            self._finish(
                job,
                EventType.FAILED,
                {**_error("timeout", "killed: timeout_s passed without a progress point"), "attempt": job.attempt},
            )
        rest = [job for job in jobs if job.job_id not in died.timed_out]
        if late or not rest:
            if rest:
                await self._run_on_slot(slot, group, rest)
            return
        if len(rest) > 1:
            for half in _halves(rest):
                await self._run_on_slot(slot, group, half)
            return
        job = rest[0]
        job.crashes += 1
        message = f"the calculation process died (exit code {died.exitcode}), crash {job.crashes}"
        if job.crashes >= self._config.crash_max:
            await self._dead_letters.send(
                job.raw,
                reason=CRASHED,
                error=message,
                job_id=job.job_id,
                tenant=job.request.tenant,
                kind=job.request.kind,
                source=job.source,
                key=job.job_id.encode(),
            )
            self._finish(
                job, EventType.FAILED, {**_error("crashed", message + "; dead-lettered"), "attempt": job.attempt}
            )
        else:
            self._retry_or_fail(job, {"type": "crashed", "message": message})

    def _retry_or_fail(self, job: Job, error: dict[str, str]) -> None:
        deadline = job.deadline
        delay = self._retry.delay_s(job.attempt)
        if not self._retry.should_retry(job.attempt):
            self._finish(job, EventType.FAILED, {"error": error, "attempt": job.attempt, "retries_exhausted": True})
            return
        if deadline is not None and time.monotonic() + delay >= deadline:
            self._finish(
                job,
                EventType.FAILED,
                {**_error("timeout", "no time left for another attempt"), "attempt": job.attempt, "last_error": error},
            )
            return
        metrics.RETRIES.labels(metrics.kind_label(job.request.kind)).inc()
        self._outbox.emit(
            job.request,
            EventType.RETRYING,
            {"attempt": job.attempt, "next_attempt": job.attempt + 1, "delay_s": round(delay, 3), "error": error},
        )
        job.attempt += 1
        self.batcher.add(job, job.group, job.request.priority, delay_s=delay, count_arrival=False, arrived=job.arrived)

    def _stopped_before_start(self, job: Job) -> bool:
        """Cancelled or out of time while it waited: settle it without running it."""
        if job.finished:
            return True
        if self.cancels.cancelled(job.job_id, job.request.tenant):
            self._finish(job, EventType.CANCELLED, _error("cancelled", "cancelled before it started"))
            return True
        if job.expired:
            self._finish(job, EventType.FAILED, _expired(job))
            return True
        deadline = job.deadline
        if deadline is not None and time.monotonic() >= deadline:
            self._finish(job, EventType.FAILED, _error("timeout", "timeout_s passed"))
            return True
        return False

    # --- the end of a job ---------------------------------------------------------------
    def _finish(self, job: Job, type_: EventType, data: dict[str, Any]) -> None:
        """Emit the terminal event; ack the request's record(s) once Kafka has the event."""
        if job.finished:
            return
        job.finished = True
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
            self._let_go(job)
            self._room.set()
        self.stats.jobs_done += 1
        _count_finish(job, type_, data)

        def ack() -> None:  # Kafka has the terminal event (never called if it does not)
            for one in job.acks:
                try:
                    one()
                except Exception:  # the consumer is stopping: the record is redelivered, the run is idempotent
                    logger.warning(
                        "could not ack the request of job %s",
                        job.job_id,
                        exc_info=True,
                        extra=_log_fields(job),
                    )

        self._outbox.emit(job.request, type_, data, on_delivered=ack)
        if job.trace is not None:
            error = data.get("error")
            job.trace.end(type_.value, error.get("type") if isinstance(error, dict) else None)

    async def _undecodable(self, raw: bytes, ack: Ack, source: Source | None, exc: Exception) -> None:
        job_id, tenant, kind = _salvage_ids(raw)
        await self._dead_letters.send(
            raw, reason=UNDECODABLE, error=str(exc), job_id=job_id, tenant=tenant, kind=kind, source=source
        )
        if job_id is not None:
            request = JobRequested.model_construct(
                job_id=job_id, tenant=tenant or "default", kind=kind, params={}, seq=0, ts=utcnow()
            )
            delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._outbox.emit(
                request,
                EventType.FAILED,
                _error("undecodable", f"the request could not be decoded: {exc}"),
                on_delivered=lambda: None if delivered.done() else delivered.set_result(None),
            )
            await delivered
        ack()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("runner task failed", exc_info=task.exception())


def _log_fields(job: Job) -> dict[str, str | None]:
    """A job's fields for structured log lines (JOBSTREAM_LOG_FORMAT=json)."""
    return {
        "job_id": job.job_id,
        "tenant": job.request.tenant,
        "trace_id": None if job.trace is None else job.trace.trace_id,
    }


def _group(request: JobRequested) -> Hashable:
    """Jobs batch together when they share a kind, a calculation version (a replay may ask for an
    old or new one) and, if the calculation says so, a batch key."""
    kind, version = request.kind, request.calc_version
    try:
        calc = registry.get(kind, version)
    except (registry.UnknownKind, registry.UnknownVersion):
        return (kind, version, None)
    if calc.batch_key is None:
        return (kind, version, None)
    try:
        return (kind, version, calc.batch_key(request.params))
    except Exception:  # a bad key function must not stop the job: it fails (or not) in the pool
        return (kind, version, None)


def _count_finish(job: Job, type_: EventType, data: dict[str, Any]) -> None:
    request = job.request
    if not metrics.recording():
        return
    metrics.finished(request.kind, type_.value, request.tenant, time.time() - request.ts.timestamp())
    if type_ is EventType.CANCELLED:
        stage = "waiting" if job.started_at is None else "running"
        metrics.CANCELLATIONS.labels(metrics.kind_label(request.kind), stage).inc()
    elif type_ is EventType.FAILED:
        error = data.get("error")
        if isinstance(error, dict) and error.get("type") == "timeout":
            metrics.TIMEOUTS.labels(metrics.kind_label(request.kind)).inc()
        elif isinstance(error, dict) and error.get("type") == "expired":
            metrics.EXPIRED.labels(metrics.kind_label(request.kind)).inc()


def _halves(jobs: list[Job]) -> list[list[Job]]:
    if not jobs:
        return []
    middle = (len(jobs) + 1) // 2
    return [half for half in (jobs[:middle], jobs[middle:]) if half]


def _error(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message}}


def _expired(job: Job) -> dict[str, Any]:
    return _error("expired", f"not started within start_within_s ({job.request.start_within_s:g}s of its submit)")


def _salvage_ids(raw: bytes) -> tuple[str | None, str | None, str]:
    """The job id, tenant and kind of an undecodable request, when its JSON still names them."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None, None, "unknown"
    if not isinstance(data, dict) or not isinstance(data.get("job_id"), str) or not data["job_id"]:
        return None, None, "unknown"
    tenant: str | None = data["tenant"] if isinstance(data.get("tenant"), str) else None
    kind: str = data["kind"] if isinstance(data.get("kind"), str) else "unknown"
    return data["job_id"], tenant, kind
