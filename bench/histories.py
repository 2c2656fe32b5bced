"""Whole job histories (queued → running → progress → outcome) with chosen timings: the events a
processor writes for one job, for the sink bench and the sink and analytics tests."""

from __future__ import annotations

from datetime import datetime, timedelta

from streams.events import EventType, JobEvent, new_job_id, utcnow


def job_history(
    tenant: str,
    *,
    kind: str = "stats.describe",
    outcome: str = "succeeded",
    start: datetime | None = None,
    queue_s: float = 1.0,
    run_s: float = 2.0,
    batch_size: int = 8,
    attempt: int = 1,
) -> list[JobEvent]:
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
