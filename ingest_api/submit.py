"""Turning submissions into Kafka records: validation, ids, and one flush per request.

Both ``POST /v1/jobs`` and ``POST /v1/jobs:batch`` go through ``prepare`` (pure:
validate and build the records) and ``publish`` (one ``send_many`` for every
record of the request, so a batch of 1,000 jobs is one flush, not 1,000).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from calculations import registry
from edge.problems import MAX_LISTED_ERRORS, validation_errors
from edge.webhook_url import WebhookPolicy, WebhookRefused, check_url
from ingest_api.reuse import ReuseRequest, reuse_key
from streams.errors import JobstreamError
from streams.events import DEFAULT_WEBHOOK_EVENTS, new_job_id
from streams.producer import AsyncProducer, Outgoing
from streams.topics import JobTopics
from streams.wire import Prepared, build, records

_IDEMPOTENT_IDS = uuid.UUID("6c1b0c1e-2f54-4f7e-9d1a-6a0c6d1f3b7e")


WebhookEvent = Literal["running", "progress", "retrying", "succeeded", "failed", "cancelled"]


class JobSubmission(BaseModel):
    """What a client posts to ``/v1/jobs`` (and each item of ``/v1/jobs:batch``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="A registered calculation, see GET /v1/kinds.", examples=["stats.describe"])
    params: dict[str, Any] = Field(description="The calculation's parameters.")
    # strict: a JSON number only (true, "1" and 1.5 are not a priority; an integer is a fine timeout_s)
    priority: int = Field(default=0, ge=0, le=9, strict=True, description="Higher runs first (0..9).")
    timeout_s: float | None = Field(
        default=None, gt=0, le=86_400, strict=True, description="Give up after this long running."
    )
    start_within_s: float | None = Field(
        default=None,
        gt=0,
        strict=True,
        description="Deadline to start: a job not started this many seconds after its submit ends failed with "
        "error type 'expired', without running (at most JOBSTREAM_MAX_START_WITHIN_S).",
    )
    webhook: str | None = Field(
        default=None,
        description="An https URL the job's events are POSTed to, signed (Standard Webhooks).",
        examples=["https://example.com/hooks/jobstream"],
    )
    webhook_events: list[WebhookEvent] | None = Field(
        default=None,
        min_length=1,
        description="Which events are sent to webhook (default: succeeded, failed, cancelled).",
    )
    reuse: ReuseRequest | None = Field(
        default=None,
        description="Answer with an identical earlier job (same tenant, kind, version and canonical params) "
        "instead of running a new one; only for deterministic kinds (GET /v1/kinds).",
    )

    def fingerprint(self) -> str:
        """A hash of the submission's content (key order and defaults do not matter), to tell a
        retry from a different request. ``v2:`` marks orjson's canonical form: stdlib json held the
        GIL, and so the event loop, ~115 ms for 1M values; it stays only for ints past 64 bits,
        which orjson refuses (a body always takes the same path, so its hash is stable)."""
        content = self._content()
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
        canonical = json.dumps(self._content(), sort_keys=True, separators=(",", ":"))
        return fingerprint == hashlib.sha256(canonical.encode()).hexdigest()

    def _content(self) -> dict[str, Any]:
        """What the fingerprint covers; without unset webhook and reuse fields, so keys stored before
        they existed still match the same body."""
        content = self.model_dump(mode="json")
        if content["webhook"] is None and content["webhook_events"] is None:
            del content["webhook"], content["webhook_events"]
        if content["reuse"] is None:
            del content["reuse"]
        if content["start_within_s"] is None:
            del content["start_within_s"]
        return content


class InvalidSubmission(JobstreamError):
    """A submission that cannot become a job: a title, a detail, the field errors and any extensions."""

    def __init__(self, title: str, detail: str, errors: list[dict[str, str]], **extensions: Any) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.errors = errors
        self.extensions = extensions


def idempotent_job_id(tenant: str, key: str) -> str:
    """The same (tenant, Idempotency-Key) always names the same job, even across API replicas."""
    return uuid.uuid5(_IDEMPOTENT_IDS, f"{tenant}\x00{key}").hex


@dataclass(frozen=True)
class Reusable:
    """What reuse needs of a submission that asked for it."""

    key: bytes  #: tenant, kind, version and the canonical params' hash (``ingest_api.reuse``)
    version: str  #: the calculation version the key names
    max_age_s: float


def prepare(
    submission: JobSubmission,
    tenant: str,
    job_id: str | None = None,
    max_errors: int = MAX_LISTED_ERRORS,
    webhooks: WebhookPolicy | None = None,
) -> Prepared:
    """Validate params against the calculation (and a webhook against ``webhooks``: without a policy a
    webhook is refused) and build the request + its queued event (an invalid one lists its first
    ``max_errors`` errors and counts them all)."""
    return prepare_validated(submission, tenant, job_id, max_errors, webhooks=webhooks)[0]


def prepare_reusable(
    submission: JobSubmission,
    tenant: str,
    max_age_limit_s: float,
    job_id: str | None = None,
    max_errors: int = MAX_LISTED_ERRORS,
    webhooks: WebhookPolicy | None = None,
    max_start_within_s: float = math.inf,
) -> tuple[Prepared, Reusable | None]:
    """``prepare``, and for a submission with ``reuse`` its reuse key; refuses reuse of a kind that is
    not deterministic, or a ``max_age_s`` past ``max_age_limit_s`` (JOBSTREAM_REUSE_MAX_AGE_S)."""
    reuse = submission.reuse
    if reuse is not None and reuse.max_age_s > max_age_limit_s:
        raise InvalidSubmission(
            "Invalid reuse",
            f"reuse.max_age_s is at most {max_age_limit_s:g} seconds",
            [{"field": "reuse.max_age_s", "reason": f"at most {max_age_limit_s:g}"}],
        )
    job, calc, model = prepare_validated(
        submission, tenant, job_id, max_errors, reuse is not None, webhooks, max_start_within_s
    )
    if reuse is None:
        return job, None
    return job, Reusable(reuse_key(tenant, calc.kind, calc.version, model), calc.version, reuse.max_age_s)


def prepare_validated(
    submission: JobSubmission,
    tenant: str,
    job_id: str | None,
    max_errors: int,
    reuse: bool = False,
    webhooks: WebhookPolicy | None = None,
    max_start_within_s: float = math.inf,
) -> tuple[Prepared, registry.Calculation, BaseModel]:
    """``prepare``, also giving the calculation and the validated params (``reuse``: refuse a kind that
    is not deterministic; a ``start_within_s`` past ``max_start_within_s``, JOBSTREAM_MAX_START_WITHIN_S).
    The single submit's hot path calls this directly: one call, as before."""
    kind, params = submission.kind, submission.params
    start_within_s = submission.start_within_s
    if start_within_s is not None and not start_within_s <= max_start_within_s:
        reason = f"at most {max_start_within_s:g} seconds"
        raise InvalidSubmission(
            "Invalid start_within_s", f"start_within_s is {reason}", [{"field": "start_within_s", "reason": reason}]
        )
    webhook, webhook_events = _webhook(submission, webhooks)
    try:
        calc = registry.get(kind)
    except registry.UnknownKind:
        raise InvalidSubmission(
            "Unknown kind",
            f"no calculation named {kind!r}",
            [{"field": "kind", "reason": "unknown kind"}],
            known_kinds=[c.kind for c in registry.kinds()],
        ) from None
    if reuse and not calc.deterministic:
        raise InvalidSubmission(
            "Reuse not possible",
            f"{kind!r} is not deterministic (its result may differ for the same params), so no earlier "
            "result can stand for a new one; submit without 'reuse'",
            [{"field": "reuse", "reason": f"{kind!r} is not deterministic"}],
        )
    try:
        model = calc.validate(params)
    except ValidationError as exc:
        errors, count = validation_errors(exc, ("params",), max_errors)
        raise InvalidSubmission("Invalid params", f"params do not fit {kind!r}", errors, error_count=count) from None
    try:  # the wire format: integers must fit in 64 bits (orjson says so with a TypeError)
        job = build(
            job_id or new_job_id(),
            tenant,
            kind,
            params,
            submission.priority,
            submission.timeout_s,
            webhook=webhook,
            webhook_events=webhook_events,
            start_within_s=start_within_s,
        )
        return job, calc, model
    except TypeError as exc:
        raise InvalidSubmission("Invalid params", str(exc), [{"field": "params", "reason": str(exc)}]) from None


def _webhook(submission: JobSubmission, policy: WebhookPolicy | None) -> tuple[str | None, list[str] | None]:
    """The submission's webhook and its event types (defaulted, deduplicated), or 422 naming the field."""
    if submission.webhook is None:
        if submission.webhook_events is not None:
            raise InvalidSubmission(
                "Invalid webhook",
                "webhook_events needs a webhook",
                [{"field": "webhook_events", "reason": "given without webhook"}],
            )
        return None, None
    try:
        if policy is None:
            raise WebhookRefused("webhooks are not accepted here")
        check_url(submission.webhook, policy)
    except WebhookRefused as exc:
        raise InvalidSubmission("Invalid webhook", str(exc), [{"field": "webhook", "reason": str(exc)}]) from None
    events = list(dict.fromkeys(submission.webhook_events or DEFAULT_WEBHOOK_EVENTS))
    if len(events) > policy.max_events:
        reason = f"at most {policy.max_events} event types"
        raise InvalidSubmission("Invalid webhook", reason, [{"field": "webhook_events", "reason": reason}])
    return submission.webhook, events


async def publish(
    producer: AsyncProducer,
    topics: JobTopics,
    jobs: list[Prepared],
    extra: list[Outgoing] | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce every job's records (and ``extra``) in one go; returns once Kafka acked all.
    ``headers``: the request's trace context, on every job's records."""
    outgoing = [record for job in jobs for record in records(job, topics, headers)]
    await producer.send_many(outgoing + (extra or []))
