"""Turning submissions into Kafka records: validation, ids, and one flush per request.

Both ``POST /v1/jobs`` and ``POST /v1/jobs:batch`` go through ``prepare`` (pure:
validate and build the records) and ``publish`` (one ``send_many`` for every
record of the request, so a batch of 1,000 jobs is one flush, not 1,000).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest_api.problems import field_errors
from processors.calculations import registry
from streams import topics
from streams.events import EventType, JobEvent, JobRequested, dumps, new_job_id, utcnow
from streams.producer import AsyncProducer, Outgoing
from streams.settings import Settings

_IDEMPOTENT_IDS = uuid.UUID("6c1b0c1e-2f54-4f7e-9d1a-6a0c6d1f3b7e")


class JobSubmission(BaseModel):
    """What a client posts to ``/v1/jobs`` (and each item of ``/v1/jobs:batch``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="A registered calculation, see GET /v1/kinds.", examples=["stats.describe"])
    params: dict[str, Any] = Field(description="The calculation's parameters.")
    priority: int = Field(default=0, ge=0, le=9, description="Higher runs first (0..9).")
    timeout_s: float | None = Field(default=None, gt=0, le=86_400, description="Give up after this long running.")

    def fingerprint(self) -> str:
        """A hash of the submission's content, to tell a retry from a different request."""
        # stdlib json, not orjson: it must hash any JSON a client sends (orjson refuses ints past 64 bits).
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class InvalidSubmission(Exception):
    """A submission that cannot become a job; carries problem details."""

    def __init__(self, title: str, detail: str, errors: list[dict[str, str]], **extensions: Any) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.errors = errors
        self.extensions = extensions

    def problem(self, status: int = 422) -> dict[str, Any]:
        return {"type": "about:blank", "title": self.title, "status": status, "detail": self.detail,
                "errors": self.errors, **self.extensions}


@dataclass(frozen=True)
class Prepared:
    request: JobRequested
    queued: JobEvent

    @property
    def job_id(self) -> str:
        return self.request.job_id


def idempotent_job_id(tenant: str, key: str) -> str:
    """The same (tenant, Idempotency-Key) always names the same job, even across API replicas."""
    return uuid.uuid5(_IDEMPOTENT_IDS, f"{tenant}\x00{key}").hex


def prepare(submission: JobSubmission, tenant: str, job_id: str | None = None) -> Prepared:
    """Validate params against the calculation and build the request + its queued event."""
    try:
        calc = registry.get(submission.kind)
    except registry.UnknownKind:
        raise InvalidSubmission("Unknown kind", f"no calculation named {submission.kind!r}",
                                [{"field": "kind", "reason": "unknown kind"}],
                                known_kinds=[c.kind for c in registry.kinds()]) from None
    try:
        calc.validate(submission.params)
    except ValidationError as exc:
        raise InvalidSubmission("Invalid params", f"params do not fit {submission.kind!r}",
                                field_errors(exc.errors(), ("params",))) from None
    try:
        orjson.dumps(submission.params)  # the wire format: integers must fit in 64 bits
    except TypeError as exc:
        raise InvalidSubmission("Invalid params", str(exc), [{"field": "params", "reason": str(exc)}]) from None
    job_id = job_id or new_job_id()
    now = utcnow()
    request = JobRequested(job_id=job_id, tenant=tenant, ts=now, kind=submission.kind, params=submission.params,
                           priority=submission.priority, timeout_s=submission.timeout_s)
    queued = JobEvent(job_id=job_id, tenant=tenant, seq=0, ts=now, type=EventType.QUEUED, kind=submission.kind,
                      data={"priority": submission.priority, "timeout_s": submission.timeout_s})
    return Prepared(request, queued)


def records(prepared: Prepared, settings: Settings) -> list[Outgoing]:
    key = prepared.job_id.encode()
    return [
        Outgoing(settings.topic(topics.REQUESTED), key, dumps(prepared.request)),
        Outgoing(settings.topic(topics.EVENTS), key, dumps(prepared.queued)),
    ]


async def publish(producer: AsyncProducer, settings: Settings, jobs: list[Prepared],
                  extra: list[Outgoing] | None = None) -> None:
    """Produce every job's records (and ``extra``) in one go; returns once Kafka acked all."""
    outgoing = [record for job in jobs for record in records(job, settings)]
    await producer.send_many(outgoing + (extra or []))
