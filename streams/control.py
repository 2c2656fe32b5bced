"""Commands to running workers, on ``jobs.control`` (today: cancel a job).

The API produces a ``CancelCommand`` keyed by ``job_id``; every processor worker
tails every partition of the topic (no consumer group), so whichever worker
holds the job — queued, backing off or running — sees the command. A worker
that starts later reads the topic from the beginning (it is kept
``control_retention_s``), so a cancel sent before the job was picked up still
wins. Cancelling a finished job, or an unknown one, has no effect.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streams import topics
from streams.events import SCHEMA_VERSION, utcnow
from streams.producer import Outgoing
from streams.settings import Settings


class CancelCommand(BaseModel):
    """Stop job ``job_id``: not started → never started; running → stops at its next progress point."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    type: Literal["cancel"] = "cancel"
    job_id: str
    tenant: str = "default"
    ts: datetime = Field(default_factory=utcnow)
    reason: str | None = None


def cancel_record(settings: Settings, job_id: str, tenant: str, reason: str | None = None) -> Outgoing:
    """The record to produce (``AsyncProducer.send_many([...])``) to cancel a job."""
    command = CancelCommand(job_id=job_id, tenant=tenant, reason=reason)
    return Outgoing(settings.topic(topics.CONTROL), job_id.encode(), orjson.dumps(command.model_dump(mode="json")))


def load_command(raw: bytes) -> CancelCommand:
    """Parse a control record; raises ``ValueError`` for anything else."""
    return CancelCommand.model_validate(orjson.loads(raw))
