"""What a replay is: the operator's selection, the plan it resolves to, and its recorded state.

A replay is stored as one record in the compacted ``jobs.replays`` topic, keyed by
its id and rewritten at every checkpoint; the latest record is the replay's truth
(the CLI, any API replica and a resumed run all read it from there).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from streams.events import JobStatus

_REPLAYED_IDS = uuid.UUID("3f0e5b6a-9c1d-4e2b-8a7f-5d6c4b3a2e19")


def replayed_job_id(replay_id: str, original_job_id: str) -> str:
    """The id of ``original_job_id``'s re-run in ``replay_id``: the same every time, so a resumed
    replay that emits a job again names the same job (and is detected as a duplicate)."""
    return uuid.uuid5(_REPLAYED_IDS, f"{replay_id}\x00{original_job_id}").hex


class ReplaySelection(BaseModel):
    """Which past requests to re-run. Every filter narrows; none given means every request."""

    model_config = ConfigDict(extra="forbid")

    since: datetime | None = Field(default=None, description="First request time included (Kafka timestamp).")
    until: datetime | None = Field(default=None, description="Requests before this time (exclusive).")
    kinds: list[str] = Field(default_factory=list, description="Only these calculation kinds.")
    job_ids: list[str] = Field(default_factory=list, max_length=10_000, description="Only these jobs.")
    statuses: list[JobStatus] = Field(
        default_factory=list, description="Only jobs whose current status is one of these (from ClickHouse)."
    )
    calc_versions: dict[str, str] = Field(
        default_factory=dict, description="kind → version to run; unnamed kinds run their current version."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReplaySelection:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self


class ReplayRequest(ReplaySelection):
    """``POST /v1/replays``: a selection, how fast to emit it, and whether to only plan it."""

    rate: float | None = Field(
        default=None, gt=0, description="Jobs per second (default JOBSTREAM_REPLAY_DEFAULT_RATE)."
    )
    dry_run: bool = Field(default=False, description="Only plan: emit nothing.")


class PartitionRange(BaseModel):
    """Requests of one ``jobs.requested`` partition a replay reads: offsets ``[start, end)``."""

    partition: int
    start: int
    end: int
    selected: int = 0  #: requests in the range that pass every filter
    position: int = 0  #: next offset to emit from (== start before, == end after)


class ReplayState(str, Enum):
    PLANNED = "planned"  #: dry run: nothing will be emitted
    RUNNING = "running"
    STOPPED = "stopped"  #: stopped on request (or its process died); can be resumed
    COMPLETED = "completed"
    FAILED = "failed"


class Replay(BaseModel):
    """A replay's plan and progress, as recorded in ``jobs.replays``."""

    replay_id: str
    tenant: str
    selection: ReplaySelection
    rate: float
    state: ReplayState
    versions: dict[str, str] = Field(description="kind → calculation version the replayed jobs run.")
    partitions: list[PartitionRange]
    total: int = Field(description="Jobs selected.")
    by_kind: dict[str, int] = Field(default_factory=dict)
    emitted: int = 0
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    error: str | None = None
    owner: str | None = Field(default=None, description="The process running it (host:pid).")
    #: ``jobs.requested`` end offsets at the last checkpoint: a resume reads from here to find what
    #: was emitted after it, so a job is never emitted twice.
    emitted_after: dict[int, int] = Field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in (ReplayState.COMPLETED, ReplayState.FAILED, ReplayState.PLANNED)
