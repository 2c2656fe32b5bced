"""A job's history as an at-least-once re-run leaves it, for the sink and analytics tests (one run's
events: ``bench.histories.job_history``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from processors.sequence import TERMINAL_SEQ
from streams.events import EventType, JobEvent


def run_twice(
    history: list[JobEvent], *, crashed: bool, again_s: float = 5.0, outcome: str = "succeeded", batch_size: int = 3
) -> tuple[list[JobEvent], list[JobEvent]]:
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
    data = {
        "succeeded": {"result": {"run": 2, "job": queued.job_id}, "calc_version": "1", "attempt": 1},
        "failed": {"error": {"type": "calculation_error", "message": "second run"}, "attempt": 1},
    }[outcome]

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
