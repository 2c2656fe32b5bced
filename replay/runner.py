"""Planning and running replays: selected past requests re-emitted as new jobs, at a set rate.

Each selected request becomes a new job (``replayed_job_id(replay, original)``, with
``replay_of``) through the same topics and processors as production traffic; originals are
never touched. Checkpoints record the scan position and ``jobs.requested``'s end offsets, and
ids are deterministic, so a resumed run emits nothing twice. Runs on plain threads with a
blocking producer; the API's event loop only starts and watches it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from confluent_kafka import Producer

from calculations import registry
from replay.book import ReplayBook, replay_record, stop_record
from replay.errors import ReplayConflict, ReplayRefused
from replay.models import PartitionRange, Replay, ReplaySelection, ReplayState, replayed_job_id
from replay.select import Filter, RequestScanner, StatusLookup, chunks
from streams import topics, wire
from streams.events import JobEvent, JobRequested, new_job_id, utcnow
from streams.kafka_config import KafkaConnection
from streams.producer import Outgoing
from streams.settings import Settings
from streams.topics import JobTopics
from telemetry import metrics

logger = logging.getLogger(__name__)

HEARTBEAT_S = 2.0  #: a running replay rewrites its record at least this often
STALE_S = 30.0  #: a running replay not heard of for this long may be resumed elsewhere


@dataclass(frozen=True)
class ReplayConfig:
    """Where the replayer reads and writes, and how long Kafka may take to acknowledge."""

    jobs: JobTopics  #: the replayed jobs' records go where new jobs' go
    replays_topic: str  #: replay plans, positions and stop requests
    produce_timeout_s: float
    limits: ReplayLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayConfig:
        return cls(
            JobTopics.from_settings(settings),
            settings.topic(topics.REPLAYS),
            settings.produce_timeout_s,
            ReplayLimits.from_settings(settings),
        )


@dataclass(frozen=True)
class ReplayLimits:
    """The replayer's part of the settings."""

    default_rate: float  #: JOBSTREAM_REPLAY_DEFAULT_RATE: jobs/s unless the request names a rate
    max_rate: float  #: JOBSTREAM_REPLAY_MAX_RATE: the highest rate a request may name
    max_jobs: int  #: JOBSTREAM_REPLAY_MAX_JOBS: most jobs one replay may select
    checkpoint_jobs: int  #: JOBSTREAM_REPLAY_CHECKPOINT_JOBS: a checkpoint after every this many jobs

    @classmethod
    def from_settings(cls, settings: Settings) -> ReplayLimits:
        return cls(
            settings.replay_default_rate,
            settings.replay_max_rate,
            settings.replay_max_jobs,
            settings.replay_checkpoint_jobs,
        )


@dataclass
class _Run:
    thread: threading.Thread
    stop: threading.Event


class Replayer:
    """Plans, runs, stops and resumes this process's replays, recording each in ``jobs.replays``."""

    def __init__(
        self,
        kafka: KafkaConnection,
        config: ReplayConfig,
        book: ReplayBook,
        *,
        statuses: StatusLookup | None = None,
        on_emit: Callable[[JobEvent], None] | None = None,
    ) -> None:
        """``statuses`` answers the status filter (ClickHouse);
        ``on_emit`` sees each replayed job's queued event once Kafka has it (the API remembers it for
        read-your-writes). Both run on replay threads."""
        self._kafka = kafka
        self._on_emit = on_emit
        self._config = config
        self._limits = config.limits
        self._book = book
        self._statuses = statuses
        self._producer = Producer(kafka.producer_config())
        self._errors: list[str] = []  # delivery failures not yet reported by a flush
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    # --- planning -------------------------------------------------------------------------
    def plan(
        self,
        tenant: str,
        selection: ReplaySelection,
        rate: float | None = None,
        dry_run: bool = False,
        replay_id: str | None = None,
    ) -> Replay:
        """Resolve the selection to offsets and count what it picks; record it (``planned`` for a dry run)."""
        limits = self._limits
        rate = rate or limits.default_rate
        if rate > limits.max_rate:
            raise ReplayRefused("Rate too high", f"at most {limits.max_rate} jobs/s", "rate")
        for kind in selection.kinds:
            self._calculation(kind, None, "kinds")
        for kind, version in selection.calc_versions.items():
            self._calculation(kind, version, "calc_versions")
        flt = Filter(tenant, selection, self._statuses)
        with RequestScanner(self._kafka, self._config.jobs.requested) as scanner:
            ranges = scanner.ranges(selection.since, selection.until)
            by_partition = {r.partition: r for r in ranges}
            by_kind: dict[str, int] = {}
            total = 0
            for chunk in chunks(filter(flt.candidate, scanner.scan(ranges)), 5_000):
                for found in flt.by_status(chunk):
                    by_partition[found.partition].selected += 1
                    by_kind[found.request.kind] = by_kind.get(found.request.kind, 0) + 1
                    total += 1
                if total > limits.max_jobs:
                    raise ReplayRefused(
                        "Too many jobs", f"the selection picks more than {limits.max_jobs} jobs; narrow it", "since"
                    )
            ends = scanner.ends()
        versions = {
            kind: self._calculation(kind, selection.calc_versions.get(kind), "kinds").version
            for kind in sorted(by_kind)
        }
        now = utcnow()
        replay = Replay(
            replay_id=replay_id or new_job_id(),
            tenant=tenant,
            selection=selection,
            rate=rate,
            state=ReplayState.PLANNED if dry_run else ReplayState.RUNNING,
            versions=versions,
            partitions=ranges,
            total=total,
            by_kind=by_kind,
            created_at=now,
            updated_at=now,
            owner=None if dry_run else self.owner,
            emitted_after=ends,
        )
        self._record(replay)
        return replay

    @staticmethod
    def _calculation(kind: str, version: str | None, field: str) -> registry.Calculation:
        try:
            return registry.get(kind, version)
        except registry.UnknownKind:
            raise ReplayRefused("Unknown kind", f"no calculation named {kind!r}", field) from None
        except registry.UnknownVersion as exc:
            raise ReplayRefused("Unknown calculation version", str(exc), field) from None

    # --- running ----------------------------------------------------------------------------
    def start(
        self,
        replay: Replay,
        already: set[str] | None = None,
        wait: bool = False,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Run ``replay`` (state ``running``) on a thread of this process; ``wait``: until it ends.
        ``headers``: the trace context of the request that started it, on every record it emits."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._run_safely,
            args=(replay, already or set(), stop, headers),
            name=f"replay-{replay.replay_id[:8]}",
            daemon=True,
        )
        with self._lock:
            self._runs[replay.replay_id] = _Run(thread, stop)
        thread.start()
        if wait:
            thread.join()

    def running_here(self, replay_id: str) -> bool:
        with self._lock:
            run = self._runs.get(replay_id)
        return run is not None and run.thread.is_alive()

    def join(self, replay_id: str, timeout_s: float | None = None) -> None:
        with self._lock:
            run = self._runs.get(replay_id)
        if run is not None:
            run.thread.join(timeout_s)

    def stop(self, replay: Replay) -> None:
        """Ask the replay to stop at its next job, wherever it runs (the stop record reaches every book)."""
        self._send([stop_record(self._config.replays_topic, replay.replay_id)])
        self._book.request_stop(replay.replay_id)
        with self._lock:
            run = self._runs.get(replay.replay_id)
        if run is not None:
            run.stop.set()

    def resume(self, replay: Replay) -> Replay:
        """Carry on a stopped (or orphaned) replay from its last checkpoint, skipping what it already emitted."""
        if self.running_here(replay.replay_id):
            raise ReplayConflict("Replay running", "this replay is running")
        if replay.state is ReplayState.RUNNING and (utcnow() - replay.updated_at) < timedelta(seconds=STALE_S):
            raise ReplayConflict("Replay running", f"this replay is running in {replay.owner}; stop it first")
        if replay.state in (ReplayState.COMPLETED, ReplayState.PLANNED):
            raise ReplayConflict(f"Replay {replay.state.value}", "there is nothing to resume")
        self._send([stop_record(self._config.replays_topic, replay.replay_id, stop=False)])
        self._book.clear_stop(replay.replay_id)
        already = self._emitted_since_checkpoint(replay)
        replay = replay.model_copy(
            update={
                "state": ReplayState.RUNNING,
                "owner": self.owner,
                "error": None,
                "updated_at": utcnow(),
                "emitted": replay.emitted + len(already),
            }
        )
        self._record(replay)
        self.start(replay, already)
        return replay

    def _emitted_since_checkpoint(self, replay: Replay) -> set[str]:
        """Ids this replay emitted after its last checkpoint (they are in jobs.requested past it)."""
        with RequestScanner(self._kafka, self._config.jobs.requested) as scanner:
            ends = scanner.ends()
            ranges = [
                PartitionRange(
                    partition=p, start=replay.emitted_after.get(p, 0), end=end, position=replay.emitted_after.get(p, 0)
                )
                for p, end in ends.items()
            ]
            return {
                f.request.replay_of
                for f in scanner.scan(ranges)
                if f.request.replay_id == replay.replay_id and f.request.replay_of is not None
            }

    def _run_safely(
        self, replay: Replay, already: set[str], stop: threading.Event, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        metrics.REPLAYS_RUNNING.inc()
        try:
            self._run(replay, already, stop, headers)
        except Exception as exc:  # recorded, so an operator sees it and can resume
            logger.exception("replay %s failed", replay.replay_id)
            latest = self._book.get(replay.replay_id) or replay
            self._record(
                latest.model_copy(
                    update={"state": ReplayState.FAILED, "error": str(exc)[:2000], "updated_at": utcnow()}
                )
            )
        finally:
            metrics.REPLAYS_RUNNING.dec()

    def _run(
        self, replay: Replay, already: set[str], stop: threading.Event, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        flt = Filter(replay.tenant, replay.selection, self._statuses)
        ranges = [r.model_copy() for r in replay.partitions]
        by_partition = {r.partition: r for r in ranges}
        emitted = replay.emitted
        sent = 0  # by this run, for pacing
        started = time.monotonic()
        last_checkpoint = started
        since_checkpoint = 0

        def stopping() -> bool:
            return stop.is_set() or self._book.stop_requested(replay.replay_id)

        def checkpoint(state: ReplayState, scanner: RequestScanner) -> Replay:
            nonlocal replay, last_checkpoint, since_checkpoint
            self._flush()
            now = utcnow()
            replay = replay.model_copy(
                update={
                    "state": state,
                    "partitions": [r.model_copy() for r in ranges],
                    "emitted": emitted,
                    "updated_at": now,
                    "emitted_after": scanner.ends(),
                    "finished_at": now if state is ReplayState.COMPLETED else None,
                }
            )
            self._record(replay)
            last_checkpoint, since_checkpoint = time.monotonic(), 0
            return replay

        with RequestScanner(self._kafka, self._config.jobs.requested) as scanner:
            for chunk in chunks(filter(flt.candidate, scanner.scan(ranges)), self._limits.checkpoint_jobs):
                chosen = {id(f) for f in flt.by_status(chunk)}
                for found in chunk:
                    if id(found) in chosen and found.request.job_id not in already:
                        # Pace to the rate, waking at least every heartbeat to record liveness and see a stop.
                        while (wait := started + sent / replay.rate - time.monotonic()) > 0 and not stopping():
                            stop.wait(min(wait, HEARTBEAT_S))
                            if time.monotonic() - last_checkpoint >= HEARTBEAT_S:
                                checkpoint(ReplayState.RUNNING, scanner)
                        if stopping():
                            checkpoint(ReplayState.STOPPED, scanner)
                            logger.info("replay %s stopped after %d jobs", replay.replay_id, emitted)
                            return
                        self._emit(replay, found.request, headers)
                        metrics.REPLAY_EMITTED.inc()
                        emitted += 1
                        sent += 1
                        since_checkpoint += 1
                    by_partition[found.partition].position = found.offset + 1
                    if since_checkpoint >= self._limits.checkpoint_jobs or (
                        time.monotonic() - last_checkpoint >= HEARTBEAT_S
                    ):
                        checkpoint(ReplayState.RUNNING, scanner)
            for r in ranges:
                r.position = r.end
            checkpoint(ReplayState.COMPLETED, scanner)
        logger.info("replay %s completed: %d jobs", replay.replay_id, emitted)

    def _emit(self, replay: Replay, original: JobRequested, headers: list[tuple[str, bytes]] | None = None) -> None:
        """The original request again, as a new job (the ingest API's record builder, so both are alike)."""
        job = wire.build(
            replayed_job_id(replay.replay_id, original.job_id),
            original.tenant,
            original.kind,
            original.params,
            original.priority,
            original.timeout_s,
            calc_version=replay.versions[original.kind],
            replay_of=original.job_id,
            replay_id=replay.replay_id,
            webhook=original.webhook,
            webhook_events=original.webhook_events,
        )
        request, queued = wire.records(job, self._config.jobs, headers)
        on_delivery = self._delivered
        if self._on_emit is not None:
            on_emit = self._on_emit

            def on_delivery(err, msg) -> None:
                self._delivered(err, msg)
                if err is None:
                    on_emit(job.queued)

        self._producer.produce(
            request.topic,
            key=request.key,
            value=request.value,
            partition=request.partition,
            headers=headers,
            on_delivery=self._delivered,
        )
        self._producer.produce(
            queued.topic, key=queued.key, value=queued.value, headers=headers, on_delivery=on_delivery
        )
        self._producer.poll(0)

    # --- Kafka ------------------------------------------------------------------------------
    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._errors.append(err.str())

    def _flush(self) -> None:
        """Wait until Kafka acked everything produced so far; raise if anything was refused."""
        remaining = self._producer.flush(self._config.produce_timeout_s)
        if remaining:
            raise RuntimeError(f"Kafka did not acknowledge {remaining} replay records")
        if self._errors:
            errors, self._errors = self._errors, []
            raise RuntimeError(f"Kafka refused replay records: {errors[0]}")

    def _send(self, records: list[Outgoing]) -> None:
        for record in records:
            self._producer.produce(record.topic, key=record.key, value=record.value, on_delivery=self._delivered)
        self._flush()

    def _record(self, replay: Replay) -> None:
        self._send([replay_record(self._config.replays_topic, replay)])
        self._book.remember(replay)

    def close(self) -> None:
        """Stop every replay of this process at its next job (they stay resumable), then flush."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.stop.set()
        for run in runs:
            run.thread.join(timeout=30)
        self._producer.flush(self._config.produce_timeout_s)
