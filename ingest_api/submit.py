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
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest_api.problems import MAX_LISTED_ERRORS, validation_errors
from processors.calculations import registry
from streams import topics
from streams.events import EventType, JobEvent, JobRequested, new_job_id, utcnow
from streams.producer import AsyncProducer, Outgoing
from streams.settings import Settings

_IDEMPOTENT_IDS = uuid.UUID("6c1b0c1e-2f54-4f7e-9d1a-6a0c6d1f3b7e")


class JobSubmission(BaseModel):
    """What a client posts to ``/v1/jobs`` (and each item of ``/v1/jobs:batch``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="A registered calculation, see GET /v1/kinds.", examples=["stats.describe"])
    params: dict[str, Any] = Field(description="The calculation's parameters.")
    # strict: a JSON number only (true, "1" and 1.5 are not a priority; an integer is a fine timeout_s)
    priority: int = Field(default=0, ge=0, le=9, strict=True, description="Higher runs first (0..9).")
    timeout_s: float | None = Field(default=None, gt=0, le=86_400, strict=True,
                                    description="Give up after this long running.")

    def fingerprint(self) -> str:
        """A hash of the submission's content (key order and defaults do not matter), to tell a
        retry from a different request. ``v2:`` marks orjson's canonical form: stdlib json held the
        GIL, and so the event loop, ~115 ms for 1M values; it stays only for ints past 64 bits,
        which orjson refuses (a body always takes the same path, so its hash is stable)."""
        content = self.model_dump(mode="json")
        try:
            canonical = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
        return "v2:" + hashlib.sha256(canonical).hexdigest()

    def matches(self, fingerprint: str) -> bool:
        """Whether a stored fingerprint is this submission's, including unversioned ones that keys
        written before ``v2:`` still carry (kept ``JOBSTREAM_IDEMPOTENCY_TTL_S``)."""
        if fingerprint.startswith("v2:"):
            return fingerprint == self.fingerprint()
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return fingerprint == hashlib.sha256(canonical.encode()).hexdigest()


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


def _template(model: type[BaseModel], filled: set[str], **required: Any) -> dict[str, Any]:
    """A record as a plain dict in the model's own field order, with its defaults.

    ``prepare`` fills in the per-job fields and calls orjson once: the same bytes as
    ``dumps(JobRequested(...))`` without building, validating and re-dumping two models per job
    (the submission is already validated). Built from the models, so a field added there is on the
    wire here too (tests/test_ingest_submit.py pins the byte equality); a field whose default is made
    per instance must be filled in per job, so it stops the import instead of being copied.
    """
    per_instance = {name for name, f in model.model_fields.items() if f.default_factory is not None} - filled
    if per_instance:
        raise RuntimeError(f"{model.__name__}.{sorted(per_instance)} default per instance: fill them in prepare()")
    return model(**required).model_dump(mode="json")


_REQUEST_TEMPLATE = _template(JobRequested, {"ts"}, job_id="", kind="", params={})
_QUEUED_TEMPLATE = _template(JobEvent, {"ts", "data"}, job_id="", seq=0, type=EventType.QUEUED, kind="")
_QUEUED = EventType.QUEUED  # enum attribute lookups are slow in Python 3.11; this runs per job
_WIRE_OPTIONS = orjson.OPT_UTC_Z  # datetimes as pydantic writes them: ...T12:00:00.123456Z


@dataclass(frozen=True)
class Prepared:
    """One job, ready to produce: its two records' wire bytes, and what read-your-writes needs."""

    job_id: str
    tenant: str
    kind: str
    ts: datetime
    data: dict[str, Any]  # the queued event's data
    request: bytes  # JobRequested on jobs.requested
    queued_value: bytes  # its queued JobEvent on jobs.events

    @property
    def queued(self) -> JobEvent:
        """The queued event as a model, for RecentJobs (built unvalidated: the fields are ours)."""
        return JobEvent.model_construct(job_id=self.job_id, tenant=self.tenant, seq=0, ts=self.ts, type=_QUEUED,
                                        kind=self.kind, data=self.data)


def idempotent_job_id(tenant: str, key: str) -> str:
    """The same (tenant, Idempotency-Key) always names the same job, even across API replicas."""
    return uuid.uuid5(_IDEMPOTENT_IDS, f"{tenant}\x00{key}").hex


def prepare(submission: JobSubmission, tenant: str, job_id: str | None = None,
            max_errors: int = MAX_LISTED_ERRORS) -> Prepared:
    """Validate params against the calculation and build the request + its queued event
    (an invalid one lists its first ``max_errors`` errors and counts them all)."""
    kind, params = submission.kind, submission.params
    try:
        calc = registry.get(kind)
    except registry.UnknownKind:
        raise InvalidSubmission("Unknown kind", f"no calculation named {kind!r}",
                                [{"field": "kind", "reason": "unknown kind"}],
                                known_kinds=[c.kind for c in registry.kinds()]) from None
    try:
        calc.validate(params)
    except ValidationError as exc:
        errors, count = validation_errors(exc, ("params",), max_errors)
        raise InvalidSubmission("Invalid params", f"params do not fit {kind!r}", errors, error_count=count) from None
    try:  # the wire format: integers must fit in 64 bits (orjson says so with a TypeError)
        return build(job_id or new_job_id(), tenant, kind, params, submission.priority, submission.timeout_s)
    except TypeError as exc:
        raise InvalidSubmission("Invalid params", str(exc), [{"field": "params", "reason": str(exc)}]) from None


def build(job_id: str, tenant: str, kind: str, params: dict[str, Any], priority: int, timeout_s: float | None,
          **replay: str | None) -> Prepared:
    """A job's two records from fields already validated: a submission, or a replay re-emitting a
    past request (``replay`` = ``calc_version``, ``replay_of``, ``replay_id``, on both records).
    Raises TypeError for an integer past 64 bits."""
    now = utcnow()
    request = orjson.dumps({**_REQUEST_TEMPLATE, "job_id": job_id, "tenant": tenant, "ts": now, "kind": kind,
                            "params": params, "priority": priority, "timeout_s": timeout_s, **replay},
                           option=_WIRE_OPTIONS)
    data = {"priority": priority, "timeout_s": timeout_s, **replay}
    queued = orjson.dumps({**_QUEUED_TEMPLATE, "job_id": job_id, "tenant": tenant, "ts": now, "kind": kind,
                           "data": data}, option=_WIRE_OPTIONS)
    return Prepared(job_id, tenant, kind, now, data, request, queued)


def records(prepared: Prepared, settings: Settings) -> list[Outgoing]:
    key = prepared.job_id.encode()
    return [
        Outgoing(settings.topic(topics.REQUESTED), key, prepared.request),
        Outgoing(settings.topic(topics.EVENTS), key, prepared.queued_value),
    ]


async def publish(producer: AsyncProducer, settings: Settings, jobs: list[Prepared],
                  extra: list[Outgoing] | None = None) -> None:
    """Produce every job's records (and ``extra``) in one go; returns once Kafka acked all."""
    outgoing = [record for job in jobs for record in records(job, settings)]
    await producer.send_many(outgoing + (extra or []))
