"""Versioned event models shared by every service: the schema of the wire (``streams.wire``).

``JobRequested`` on ``jobs.requested`` is the command a processor executes; ``JobEvent`` on
``jobs.events`` is everything that happened to a job, in ``seq`` order (``queued`` is seq 0,
written by the API in the same flush as the request). Both are keyed by ``job_id`` so one
job's records stay ordered in one partition.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from streams.errors import JobstreamError

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_job_id() -> str:
    """A random, URL-safe job id (UUID4 hex: unguessable, so ids leak nothing)."""
    return uuid.uuid4().hex


class EventType(str, Enum):
    """What happened to a job; each member is also the SSE ``event:`` name."""

    QUEUED = "queued"  #: accepted; the request is in Kafka
    RUNNING = "running"  #: a processor picked it up
    PROGRESS = "progress"  #: fraction done, 0..1
    RETRYING = "retrying"  #: an attempt failed transiently and will be retried
    SUCCEEDED = "succeeded"  #: terminal, with the result
    FAILED = "failed"  #: terminal, with the error
    CANCELLED = "cancelled"  #: terminal, stopped on request


class JobStatus(str, Enum):
    """Job status as clients see it: ``queued → running → succeeded | failed | cancelled``."""

    QUEUED = "queued"  #: waiting for a processor
    RUNNING = "running"  #: being calculated
    SUCCEEDED = "succeeded"  #: done; result available
    FAILED = "failed"  #: done; error available
    CANCELLED = "cancelled"  #: done; stopped on request

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
TERMINAL_EVENTS = frozenset({EventType.SUCCEEDED, EventType.FAILED, EventType.CANCELLED})
#: Event types a webhook may ask for (``queued`` is the submit's own answer), and the default.
WEBHOOK_EVENTS = ("running", "progress", "retrying", "succeeded", "failed", "cancelled")
DEFAULT_WEBHOOK_EVENTS = ("succeeded", "failed", "cancelled")

# The status an event moves a job to; progress/retrying keep the job running.
_STATUS_AFTER: dict[EventType, JobStatus] = {
    EventType.QUEUED: JobStatus.QUEUED,
    EventType.RUNNING: JobStatus.RUNNING,
    EventType.PROGRESS: JobStatus.RUNNING,
    EventType.RETRYING: JobStatus.RUNNING,
    EventType.SUCCEEDED: JobStatus.SUCCEEDED,
    EventType.FAILED: JobStatus.FAILED,
    EventType.CANCELLED: JobStatus.CANCELLED,
}

# Allowed transitions of the state machine (same-status moves are always fine).
_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(JobstreamError, ValueError):
    """An event would move a job along an edge the state machine does not have."""


def next_status(current: JobStatus | None, event: EventType) -> JobStatus:
    """The status after ``event``; raises ``InvalidTransition`` for an impossible move."""
    target = _STATUS_AFTER[event]
    if current is None:
        return target
    if target is current or target in _ALLOWED[current]:
        return target
    raise InvalidTransition(f"{current.value} -> {target.value} (on {event.value!r})")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    job_id: str
    tenant: str = "default"
    seq: int = Field(ge=0)
    ts: datetime = Field(default_factory=utcnow)


class JobRequested(_Record):
    """The command on ``jobs.requested``: run calculation ``kind`` on ``params``."""

    type: Literal["requested"] = "requested"
    seq: int = 0
    kind: str
    params: dict[str, Any]
    priority: int = 0
    timeout_s: float | None = None
    calc_version: str | None = None  # None: the version registered when it runs
    replay_of: str | None = None  # the job this one re-runs (set by a replay)
    replay_id: str | None = None  # the replay that emitted it
    webhook: str | None = None  # where the notifier posts this job's events (validated at submit)
    webhook_events: list[str] | None = None  # which event types it posts (set whenever webhook is)
    start_within_s: float | None = None  # not started this long after ts: it ends failed, "expired", unrun


class JobEvent(_Record):
    """One thing that happened to a job, on ``jobs.events``.

    ``data`` holds the type-specific payload: ``{"kind", "submitted_at"}`` for
    queued, ``{"progress"}`` for progress, ``{"result", "calc_version"}`` for
    succeeded, ``{"error": {"type", "message"}}`` for failed.
    """

    type: EventType
    kind: str
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


class ReuseHow(str, Enum):
    """How an earlier job answered a request that asked for ``reuse``."""

    HIT = "hit"  #: it had succeeded within max_age_s: its result, at once
    JOIN = "join"  #: it was queued or running: the request joined it


class JobReused(BaseModel):
    """One request answered by an earlier job, on ``jobs.reuses`` (for analytics; no job is made).

    ``answer_id`` names the answer (random), so a record delivered twice is counted once.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    answer_id: str
    tenant: str
    kind: str
    job_id: str  #: the earlier job that answered
    how: ReuseHow
    ts: datetime = Field(default_factory=utcnow)


class JobView(BaseModel):
    """A job's current state, folded from its events (``apply`` in seq order)."""

    job_id: str
    tenant: str
    kind: str
    status: JobStatus
    progress: float = 0.0
    seq: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    calc_version: str | None = None
    replay_of: str | None = None  #: for a replayed job, the job it re-runs
    params: dict[str, Any] | None = None  #: from the queued event; None for jobs queued before it carried them

    @classmethod
    def fold(cls, events: list[JobEvent]) -> JobView | None:
        """Fold events (any order, duplicates allowed) into a view; None if there are none."""
        view: JobView | None = None
        seen: set[int] = set()
        for event in sorted(events, key=lambda e: e.seq):
            if event.seq in seen:
                continue
            seen.add(event.seq)
            view = event_to_view(view, event)
        return view


def event_to_view(view: JobView | None, event: JobEvent) -> JobView:
    """Apply one event to a view (tolerant: an out-of-machine event is ignored)."""
    if view is None:
        view = JobView(
            job_id=event.job_id,
            tenant=event.tenant,
            kind=event.kind,
            status=JobStatus.QUEUED,
            submitted_at=event.ts,
        )
    try:
        status = next_status(view.status, event.type)
    except InvalidTransition:
        return view
    update: dict[str, Any] = {"status": status, "seq": event.seq}
    if event.type is EventType.QUEUED:
        update["submitted_at"] = event.ts
        if event.data.get("replay_of"):
            update["replay_of"] = event.data["replay_of"]
        if isinstance(event.data.get("params"), dict):
            update["params"] = event.data["params"]
    elif event.type is EventType.RUNNING:
        update["started_at"] = view.started_at or event.ts
        update["attempts"] = max(view.attempts, int(event.data.get("attempt", 1)))
    elif event.type is EventType.PROGRESS:
        update["progress"] = max(view.progress, float(event.data.get("progress", 0.0)))
    elif event.type is EventType.RETRYING:
        update["attempts"] = max(view.attempts, int(event.data.get("attempt", view.attempts)))
    if event.terminal:
        update["finished_at"] = event.ts
    if event.type is EventType.SUCCEEDED:
        update["progress"] = 1.0
        update["result"] = event.data.get("result")
        update["calc_version"] = event.data.get("calc_version")
    elif event.type in (EventType.FAILED, EventType.CANCELLED):
        update["error"] = event.data.get("error")
    return view.model_copy(update=update)
