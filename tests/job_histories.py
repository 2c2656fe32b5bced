"""Whole job histories (queued → running → progress → outcome) with chosen timings, for sink tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from confluent_kafka import Producer

from processors.sequence import TERMINAL_SEQ
from streams import topics
from streams.events import EventType, JobEvent, new_job_id, utcnow
from streams.kafka_config import producer_config
from streams.settings import Settings
from streams.wire import dumps


def job_history(tenant: str, *, kind: str = "stats.describe", outcome: str = "succeeded",
                start: datetime | None = None, queue_s: float = 1.0, run_s: float = 2.0,
                batch_size: int = 8, attempt: int = 1) -> list[JobEvent]:
    """Four events of one job: queued at ``start``, running ``queue_s`` later, done ``run_s`` after that."""
    job_id = new_job_id()
    t0 = start or utcnow()
    started = t0 + timedelta(seconds=queue_s)
    finished = started + timedelta(seconds=run_s)
    terminal = {
        "succeeded": {"result": {"mean": 1.5, "job": job_id}, "calc_version": "1", "attempt": attempt},
        "failed": {"error": {"type": "calculation_error", "message": "boom"}, "attempt": attempt},
        "cancelled": {"error": {"type": "cancelled", "message": "on request"}},
    }[outcome]

    def event(seq: int, type_: EventType, ts: datetime, data: dict) -> JobEvent:
        return JobEvent(job_id=job_id, tenant=tenant, seq=seq, type=type_, kind=kind, ts=ts, data=data)

    return [
        event(0, EventType.QUEUED, t0, {"priority": 0, "timeout_s": None}),
        event(1, EventType.RUNNING, started, {"attempt": attempt, "batch_size": batch_size}),
        event(2, EventType.PROGRESS, started + timedelta(seconds=run_s / 2), {"progress": 0.5}),
        event(3, EventType(outcome), finished, terminal),
    ]


def produce(bootstrap: str, settings: Settings, events: list[JobEvent]) -> None:
    """Put events on ``jobs.events`` keyed by job id (as the API and processors do), acknowledged."""
    producer = Producer(producer_config(bootstrap, settings))
    topic = settings.topic(topics.EVENTS)
    failures: list[str] = []
    for event in events:
        producer.produce(topic, key=event.job_id.encode(), value=dumps(event),
                         on_delivery=lambda err, _: failures.append(str(err)) if err else None)
        producer.poll(0)
    if producer.flush(30) != 0 or failures:
        raise RuntimeError(f"events not acknowledged: {failures[:3]}")


def run_twice(history: list[JobEvent], *, crashed: bool, again_s: float = 5.0, outcome: str = "succeeded",
              batch_size: int = 3) -> tuple[list[JobEvent], list[JobEvent]]:
    """A ``job_history`` as a processor killed mid-batch leaves it (at-least-once): the first run,
    then a second run of the same job ``again_s`` after the first one's end.

    ``crashed``: the first run died before its terminal event reached Kafka; otherwise it got there
    and the re-run sends a second terminal event (same seq, later time, a result of its own). The
    re-run's other events have higher seqs (``processors.sequence``) and start again from attempt 1,
    progress 0.
    """
    queued, running, progress, terminal = history
    first_terminal = terminal.model_copy(update={"seq": TERMINAL_SEQ})
    first = [queued, running, progress] + ([] if crashed else [first_terminal])
    t = terminal.ts + timedelta(seconds=again_s)
    data = {"succeeded": {"result": {"run": 2, "job": queued.job_id}, "calc_version": "1", "attempt": 1},
            "failed": {"error": {"type": "calculation_error", "message": "second run"}, "attempt": 1}}[outcome]

    def event(seq: int, type_: EventType, ts: datetime, data: dict) -> JobEvent:
        return queued.model_copy(update={"seq": seq, "type": type_, "ts": ts, "data": data})

    second = [
        event(10_000, EventType.RUNNING, t, {"attempt": 1, "batch_size": batch_size}),
        event(10_001, EventType.PROGRESS, t, {"progress": 0.0}),
        event(10_002, EventType.PROGRESS, t + timedelta(seconds=1), {"progress": 0.25}),
        event(10_003, EventType.PROGRESS, t + timedelta(seconds=2), {"progress": 1.0}),
        event(TERMINAL_SEQ, EventType(outcome), t + timedelta(seconds=3), data),
    ]
    return first, second
