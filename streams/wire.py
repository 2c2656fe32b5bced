"""The wire format of ``jobs.requested`` and ``jobs.events``: the one encoder and decoder of each.

Every service writes and reads these records through here. Records are compact JSON with the
fields in the models' order (``streams.events``: the schema) and ``ts`` as ISO 8601 with ``Z``,
written with one orjson call straight from the fields (no model per record); an import-time
check keeps the encoders' fields equal to the models'. Decoders validate: anything read from
Kafka may be malformed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel

from streams.events import SCHEMA_VERSION, EventType, JobEvent, JobRequested, JobReused, utcnow
from streams.producer import Outgoing
from streams.topics import JobTopics

_OPTIONS = orjson.OPT_UTC_Z  # datetimes as pydantic writes them: ...T12:00:00.123456Z


# --- encoders ---------------------------------------------------------------------------------
def encode_request(
    job_id: str,
    tenant: str,
    kind: str,
    params: dict[str, Any] | orjson.Fragment,
    priority: int,
    timeout_s: float | None,
    ts: datetime,
    calc_version: str | None = None,
    replay_of: str | None = None,
    replay_id: str | None = None,
    webhook: str | None = None,
    webhook_events: list[str] | None = None,
    start_within_s: float | None = None,
    *,
    seq: int = 0,
    schema_version: int = SCHEMA_VERSION,
) -> bytes:
    """A ``JobRequested`` as bytes. Raises TypeError for what JSON cannot hold (an integer past 64 bits)."""
    return orjson.dumps(
        {
            "schema_version": schema_version,
            "job_id": job_id,
            "tenant": tenant,
            "seq": seq,
            "ts": ts,
            "type": "requested",
            "kind": kind,
            "params": params,
            "priority": priority,
            "timeout_s": timeout_s,
            "calc_version": calc_version,
            "replay_of": replay_of,
            "replay_id": replay_id,
            "webhook": webhook,
            "webhook_events": webhook_events,
            "start_within_s": start_within_s,
        },
        option=_OPTIONS,
    )


def encode_event(
    job_id: str,
    tenant: str,
    seq: int,
    type_: EventType,
    kind: str,
    data: dict[str, Any],
    ts: datetime,
    schema_version: int = SCHEMA_VERSION,
) -> bytes:
    """A ``JobEvent`` as bytes. ``data`` must be JSON-ready (str keys; results are, see ``processors.executor``)."""
    return orjson.dumps(
        {
            "schema_version": schema_version,
            "job_id": job_id,
            "tenant": tenant,
            "seq": seq,
            "ts": ts,
            "type": type_.value,
            "kind": kind,
            "data": data,
        },
        option=_OPTIONS,
    )


def dumps(record: JobEvent | JobRequested) -> bytes:
    """A record model as bytes, through the encoders above (tests pin: what ``model_dump`` writes)."""
    if isinstance(record, JobEvent):
        return encode_event(
            record.job_id,
            record.tenant,
            record.seq,
            record.type,
            record.kind,
            record.data,
            record.ts,
            record.schema_version,
        )
    return encode_request(
        record.job_id,
        record.tenant,
        record.kind,
        record.params,
        record.priority,
        record.timeout_s,
        record.ts,
        record.calc_version,
        record.replay_of,
        record.replay_id,
        record.webhook,
        record.webhook_events,
        record.start_within_s,
        seq=record.seq,
        schema_version=record.schema_version,
    )


def _check_fields(model: type[BaseModel], encoded: bytes) -> None:
    """Stop the import when a model's fields and its encoder's differ: a field added to the schema must
    be on the wire too (and a default made per instance must be filled in per record)."""
    if list(orjson.loads(encoded)) != list(model.model_fields):
        raise RuntimeError(
            f"{model.__name__}'s fields {list(model.model_fields)} differ from what streams/wire.py "
            f"writes: {list(orjson.loads(encoded))}"
        )


_check_fields(JobRequested, encode_request("", "", "", {}, 0, None, utcnow()))
_check_fields(JobEvent, encode_event("", "", 0, EventType.QUEUED, "", {}, utcnow()))


# --- decoders ---------------------------------------------------------------------------------
def decode_request(raw: bytes) -> JobRequested:
    """A request from Kafka, validated by its model; raises ValueError for anything else (the
    processors dead-letter it)."""
    return JobRequested.model_validate(orjson.loads(raw))


class WireEvent(NamedTuple):
    """A decoded event: its fields, and ``raw``, the record as one line of canonical JSON (the Kafka
    bytes themselves unless they had to be normalised)."""

    type: EventType
    job_id: str
    tenant: str
    seq: int
    kind: str
    ts: datetime
    data: dict[str, Any]
    schema_version: int
    raw: bytes

    def model(self) -> JobEvent:
        """The event as a model (built unvalidated: ``decode_event`` validated it)."""
        return JobEvent.model_construct(
            schema_version=self.schema_version,
            job_id=self.job_id,
            tenant=self.tenant,
            seq=self.seq,
            ts=self.ts,
            type=self.type,
            kind=self.kind,
            data=self.data,
        )


def as_model(event: JobEvent | WireEvent) -> JobEvent:
    """``event`` as a model: readers hand decoded events around and build the model only to keep one."""
    return event.model() if isinstance(event, WireEvent) else event


_TYPES = {t.value: t for t in EventType}
_INJECTED = frozenset({"kafka_partition", "kafka_offset", "submitted_at", "started_at"})  # fields the sink adds
_MAX_U32 = 2**32 - 1  # seq's column type in ClickHouse (schema_version's: UInt16)
_new_wire_event = tuple.__new__  # WireEvent without its Python-level __new__: this runs per event


def decode_event(raw: bytes | None) -> WireEvent:
    """An event from Kafka; raises ValueError for a record that is not a ``JobEvent``.

    The fast path accepts the canonical form (what ``encode_event`` writes: every field present,
    of its exact type, on one line) and keeps the bytes; anything else goes through ``JobEvent``
    (defaults filled in, extra fields dropped, a ts without zone read as UTC) and is re-encoded.
    """
    if not raw:
        raise ValueError("not a job event: empty")
    try:
        d = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not a job event: {exc}") from None
    if type(d) is dict and raw[:1] == b"{" and b"\n" not in raw and b"\r" not in raw and _INJECTED.isdisjoint(d):
        name = d.get("type")
        type_ = _TYPES.get(name) if type(name) is str else None
        seq, version, ts, job_id, tenant, kind, data = (
            d.get("seq"),
            d.get("schema_version"),
            d.get("ts"),
            d.get("job_id"),
            d.get("tenant"),
            d.get("kind"),
            d.get("data"),
        )
        if (
            type_ is not None
            and type(seq) is int
            and 0 <= seq <= _MAX_U32
            and type(version) is int
            and 0 <= version <= 65535
            and type(job_id) is str
            and type(tenant) is str
            and type(kind) is str
            and type(data) is dict
            and type(ts) is str
        ):
            try:
                parsed = datetime.fromisoformat(ts)
            except ValueError:
                parsed = None
            if parsed is not None and parsed.tzinfo is not None and 1900 < parsed.year < 2299:
                return _new_wire_event(WireEvent, (type_, job_id, tenant, seq, kind, parsed, data, version, raw))
    event = JobEvent.model_validate(d)  # a ValidationError is a ValueError
    ts = event.ts if event.ts.tzinfo is not None else event.ts.replace(tzinfo=UTC)
    return WireEvent(
        event.type,
        event.job_id,
        event.tenant,
        event.seq,
        event.kind,
        ts,
        event.data,
        event.schema_version,
        encode_event(
            event.job_id, event.tenant, event.seq, event.type, event.kind, event.data, ts, event.schema_version
        ),
    )


# What ``encode_event`` writes first: the fields before ``data``, all scalars, in this order (strings
# without quotes or backslashes: ids, tenants and kinds are validated names, ts is ISO 8601).
_HEAD = re.compile(
    rb'\{"schema_version":\d+,"job_id":"([^"\\]*)","tenant":"([^"\\]*)","seq":\d+,"ts":"[^"\\]*","type":"([a-z_]+)",'
)


def peek(raw: bytes | None) -> tuple[str, str, str] | None:
    """``(type, job_id, tenant)`` of an event in the canonical form, read from its first bytes
    without parsing the rest (~1 µs, a quarter to a third of ``decode_event``); None for anything
    else, which the caller decodes in full. For readers that skip most events (the notifier, the
    tenant backlog): a skipped record is not validated, a kept one still goes through ``decode_event``."""
    if not raw:
        return None
    head = _HEAD.match(raw)
    if head is None:
        return None
    job_id, tenant, type_ = head.groups()
    return type_.decode(), job_id.decode(), tenant.decode()


# --- a job's webhook on its worker events (a Kafka header) ------------------------------------
#: The header a worker puts on each event of a job with a webhook: the queued event's two fields.
#: The API's queued event and the worker's request are produced together but land on their own; a
#: worker's ``running`` may reach ``jobs.events`` before the queued event that tells the notifier
#: where to post, and the notifier would skip it. With the header the event tells it itself.
WEBHOOK_HEADER = "jobstream-webhook"


def webhook_header(url: str, events: list[str] | None) -> tuple[str, bytes]:
    return WEBHOOK_HEADER, orjson.dumps({"webhook": url, "webhook_events": events or []})


def webhook_in(headers: list[tuple[str, bytes | None]] | None) -> dict[str, Any] | None:
    """The ``webhook``/``webhook_events`` a worker event carries, or None (none, or not a JSON object)."""
    for name, value in headers or ():
        if name == WEBHOOK_HEADER and value:
            try:
                found = orjson.loads(value)
            except orjson.JSONDecodeError:
                return None
            return found if isinstance(found, dict) else None
    return None


def load_event(raw: bytes) -> JobEvent:
    """An event from Kafka as a model; raises ValueError for a record that is not a ``JobEvent``."""
    return decode_event(raw).model()


# --- a new job's records ----------------------------------------------------------------------
_QUEUED = EventType.QUEUED  # enum attribute lookups are slow in Python 3.11; this runs per job


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
        return JobEvent.model_construct(
            job_id=self.job_id, tenant=self.tenant, seq=0, ts=self.ts, type=_QUEUED, kind=self.kind, data=self.data
        )


def build(
    job_id: str,
    tenant: str,
    kind: str,
    params: dict[str, Any],
    priority: int,
    timeout_s: float | None,
    calc_version: str | None = None,
    replay_of: str | None = None,
    replay_id: str | None = None,
    webhook: str | None = None,
    webhook_events: list[str] | None = None,
    start_within_s: float | None = None,
) -> Prepared:
    """A job's two records from fields already validated: a submission, or a replay re-emitting a
    past request (``calc_version``, ``replay_of``, ``replay_id``, on both records). A ``webhook``
    (with its ``webhook_events``) is on both too: the notifier learns it from the queued event.
    ``start_within_s`` (a deadline to start, counted from ``ts``) is on both records when set.
    Raises TypeError for an integer past 64 bits."""
    now = utcnow()
    replay = (
        {"calc_version": calc_version, "replay_of": replay_of, "replay_id": replay_id} if replay_id is not None else {}
    )  # a replay names all three; a submission none
    # params go on both records: encoded once, embedded twice (large params cost one encode, not two)
    encoded = orjson.Fragment(orjson.dumps(params))
    request = encode_request(
        job_id,
        tenant,
        kind,
        encoded,
        priority,
        timeout_s,
        now,
        calc_version,
        replay_of,
        replay_id,
        webhook,
        webhook_events,
        start_within_s,
    )
    # params ride on the queued event too, so the job view (store or recent memory) can show them
    data: dict[str, Any] = {"priority": priority, "timeout_s": timeout_s, "params": params, **replay}
    if start_within_s is not None:
        data["start_within_s"] = start_within_s
    if webhook is not None:
        data["webhook"] = webhook
        data["webhook_events"] = webhook_events
    queued = encode_event(job_id, tenant, 0, _QUEUED, kind, {**data, "params": encoded}, now)
    return Prepared(job_id, tenant, kind, now, data, request, queued)


def records(prepared: Prepared, topics: JobTopics, headers: list[tuple[str, bytes]] | None = None) -> list[Outgoing]:
    """The job's request and queued event; ``headers`` (its trace context, if any) go on both."""
    key = prepared.job_id.encode()
    partition = topics.partitioner.partition(prepared.tenant, prepared.job_id, prepared.data["priority"])
    return [
        Outgoing(topics.requested, key, prepared.request, headers, partition),
        Outgoing(topics.events, key, prepared.queued_value, headers),
    ]


# --- reuse answers (jobs.reuses) --------------------------------------------------------------
def encode_reused(record: JobReused) -> bytes:
    """A reuse answer's record; keyed by the earlier job's id, like its other records."""
    return orjson.dumps(record.model_dump(mode="json"))


def decode_reused(raw: bytes | None) -> JobReused:
    """A reuse answer from Kafka; raises ValueError for anything else."""
    if not raw:
        raise ValueError("not a reuse record: empty")
    return JobReused.model_validate_json(raw)  # a ValidationError is a ValueError
