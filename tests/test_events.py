"""The shared contracts: serialisation round-trips and the job state machine."""

from datetime import timedelta

import pytest

from streams.events import (
    EventType,
    InvalidTransition,
    JobEvent,
    JobRequested,
    JobStatus,
    JobView,
    next_status,
    utcnow,
)
from streams.wire import decode_request, dumps, load_event


def event(seq: int, type_: EventType, **data) -> JobEvent:
    return JobEvent(
        job_id="j1",
        tenant="t",
        seq=seq,
        type=type_,
        kind="stats.describe",
        ts=utcnow() + timedelta(milliseconds=seq),
        data=data,
    )


def test_request_round_trips_through_the_wire_format():
    request = JobRequested(job_id="j1", tenant="t", kind="stats.describe", params={"values": [1.5, 2]}, priority=3)
    assert decode_request(dumps(request)) == request


def test_event_round_trips_and_keeps_its_type():
    original = event(5, EventType.SUCCEEDED, result={"mean": 1.0}, calc_version="1")
    decoded = load_event(dumps(original))
    assert decoded == original and decoded.type is EventType.SUCCEEDED and decoded.terminal


@pytest.mark.parametrize(
    "current,type_,expected",
    [
        (None, EventType.QUEUED, JobStatus.QUEUED),
        (JobStatus.QUEUED, EventType.RUNNING, JobStatus.RUNNING),
        (JobStatus.QUEUED, EventType.CANCELLED, JobStatus.CANCELLED),
        (JobStatus.RUNNING, EventType.PROGRESS, JobStatus.RUNNING),
        (JobStatus.RUNNING, EventType.RETRYING, JobStatus.RUNNING),
        (JobStatus.RUNNING, EventType.SUCCEEDED, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, EventType.FAILED, JobStatus.FAILED),
    ],
)
def test_allowed_transitions(current, type_, expected):
    assert next_status(current, type_) is expected


@pytest.mark.parametrize(
    "current,type_",
    [
        (JobStatus.SUCCEEDED, EventType.RUNNING),
        (JobStatus.FAILED, EventType.SUCCEEDED),
        (JobStatus.CANCELLED, EventType.PROGRESS),
        (JobStatus.RUNNING, EventType.QUEUED),
    ],
)
def test_impossible_transitions_are_refused(current, type_):
    with pytest.raises(InvalidTransition):
        next_status(current, type_)


def test_fold_orders_by_seq_dedups_and_keeps_progress_monotonic():
    events = [
        event(3, EventType.PROGRESS, progress=0.25),
        event(0, EventType.QUEUED),
        event(2, EventType.PROGRESS, progress=0.5),  # older report arriving late: must not move progress back
        event(1, EventType.RUNNING, attempt=1),
        event(1, EventType.RUNNING, attempt=1),  # redelivered duplicate
    ]
    view = JobView.fold(events)
    assert view is not None
    assert view.status is JobStatus.RUNNING and view.progress == 0.5 and view.seq == 3 and view.attempts == 1
    assert view.started_at is not None and view.finished_at is None


def test_fold_terminal_success_carries_result_and_ignores_later_noise():
    view = JobView.fold(
        [
            event(0, EventType.QUEUED),
            event(1, EventType.RUNNING),
            event(2, EventType.SUCCEEDED, result={"mean": 2.0}, calc_version="1"),
            event(3, EventType.PROGRESS, progress=0.1),  # after terminal: ignored by the state machine
        ]
    )
    assert view is not None
    assert view.status is JobStatus.SUCCEEDED and view.result == {"mean": 2.0} and view.progress == 1.0
    assert view.finished_at is not None and view.calc_version == "1"


def test_fold_of_nothing_is_none():
    assert JobView.fold([]) is None
