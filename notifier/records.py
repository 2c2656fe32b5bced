"""What the notifier keeps in Kafka: subscriptions, deliveries waiting for a retry, and attempts.

Every record is JSON keyed by job id, so one job's records share a partition. A delivery carries
the event exactly as it was on ``jobs.events`` (the body it posts) and everything its next
attempt needs, so a notifier that restarts needs nothing but these topics.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

_IDS = uuid.UUID("0b7e3c55-8a0e-4d55-9b8f-5f0c2a3e9d41")


def webhook_id(job_id: str, event: str, seq: int) -> str:
    """The ``webhook-id`` of one event of one job: the same on every attempt and redelivery (and for a
    re-run's terminal event, whose seq is the original's), so a receiver can drop repeats."""
    return "msg_" + uuid.uuid5(_IDS, f"{job_id}\x00{event}\x00{seq}").hex


@dataclass(frozen=True)
class Subscription:
    """A job's webhook, from its queued event."""

    tenant: str
    url: str
    events: frozenset[str]

    def to_bytes(self) -> bytes:
        return orjson.dumps({"tenant": self.tenant, "url": self.url, "events": sorted(self.events)})

    @classmethod
    def from_bytes(cls, raw: bytes) -> Subscription:
        d = orjson.loads(raw)
        return cls(str(d["tenant"]), str(d["url"]), frozenset(str(e) for e in d["events"]))

    @classmethod
    def from_queued(cls, tenant: str, data: dict[str, Any]) -> Subscription | None:
        url, events = data.get("webhook"), data.get("webhook_events")
        if not isinstance(url, str) or not isinstance(events, list):
            return None
        return cls(tenant, url, frozenset(str(e) for e in events))


@dataclass(frozen=True)
class Delivery:
    """One event to post to one URL, and where its attempts stand."""

    webhook_id: str
    job_id: str
    tenant: str
    event: str
    seq: int
    url: str
    body: bytes  #: the event as on jobs.events
    attempt: int  #: the number of the next attempt (1: the first)
    first_at: float  #: unix seconds of the first attempt: the retry horizon counts from it
    due_at: float  #: unix seconds when the next attempt may run

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "webhook_id": self.webhook_id,
                "job_id": self.job_id,
                "tenant": self.tenant,
                "event": self.event,
                "seq": self.seq,
                "url": self.url,
                "body": self.body.decode(),
                "attempt": self.attempt,
                "first_at": self.first_at,
                "due_at": self.due_at,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Delivery:
        d = orjson.loads(raw)
        return cls(
            str(d["webhook_id"]),
            str(d["job_id"]),
            str(d["tenant"]),
            str(d["event"]),
            int(d["seq"]),
            str(d["url"]),
            str(d["body"]).encode(),
            int(d["attempt"]),
            float(d["first_at"]),
            float(d["due_at"]),
        )

    def later(self, due_at: float, next_attempt: bool = True) -> Delivery:
        return replace(self, due_at=due_at, attempt=self.attempt + 1 if next_attempt else self.attempt)


@dataclass(frozen=True)
class AttemptRecord:
    """One row of ``webhook_deliveries`` (the sink inserts the JSON as is)."""

    delivery: Delivery
    attempted_at: float
    status_code: int  #: 0: no answer
    duration_ms: float
    outcome: str  #: delivered, retrying, failed, gone, refused
    error: str
    response: str  #: a prefix of the answer's body

    def to_bytes(self) -> bytes:
        d = self.delivery
        at = datetime.fromtimestamp(self.attempted_at, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        return orjson.dumps(
            {
                "tenant": d.tenant,
                "job_id": d.job_id,
                "event": d.event,
                "seq": d.seq,
                "webhook_id": d.webhook_id,
                "url": d.url,
                "attempt": d.attempt,
                "attempted_at": at,
                "status_code": self.status_code,
                "duration_ms": round(self.duration_ms, 3),
                "outcome": self.outcome,
                "error": self.error,
                "response": self.response,
            }
        )
