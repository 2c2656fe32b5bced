"""A job's records as wire bytes: the request on ``jobs.requested`` and its ``queued`` event.

The one place a new job becomes bytes, for the ingest API and for replays alike. Built from
plain templates of the models with one orjson call per record (no model per job); the
templates come from the models, so a field added there is on the wire here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel

from streams import topics
from streams.events import EventType, JobEvent, JobRequested, utcnow
from streams.producer import Outgoing
from streams.settings import Settings


def _template(model: type[BaseModel], filled: set[str], **required: Any) -> dict[str, Any]:
    """A record as a plain dict in the model's own field order, with its defaults.

    ``build`` fills in the per-job fields and calls orjson once: the same bytes as
    ``dumps(JobRequested(...))`` without building, validating and re-dumping two models per job
    (the submission is already validated). Built from the models, so a field added there is on the
    wire here too (tests/test_ingest_submit.py pins the byte equality); a field whose default is made
    per instance must be filled in per job, so it stops the import instead of being copied.
    """
    per_instance = {name for name, f in model.model_fields.items() if f.default_factory is not None} - filled
    if per_instance:
        raise RuntimeError(f"{model.__name__}.{sorted(per_instance)} default per instance: fill them in build()")
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
