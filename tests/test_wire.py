"""The wire format: the one encoder writes byte for byte what the models write, and the one decoder
takes the canonical form as is, normalises other valid events, and refuses anything else."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from pydantic import BaseModel, Field

from streams import wire
from streams.events import EventType, JobEvent, JobRequested


def model_bytes(record: BaseModel) -> bytes:
    """The reference: what pydantic itself writes for a record."""
    return orjson.dumps(record.model_dump(mode="json"))


TIMES = [datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 11, 23, 10, 29, 1, 123456, tzinfo=UTC)]


@pytest.mark.parametrize("ts", TIMES)
@pytest.mark.parametrize(
    "type_, data",
    [
        (EventType.RUNNING, {"attempt": 2, "batch_size": 64, "worker": "host:1"}),
        (EventType.PROGRESS, {"progress": 0.0}),
        (
            EventType.SUCCEEDED,
            {
                "result": {
                    "count": 4,
                    "mean": 2.5,
                    "p99": float("nan"),
                    "rows": [[1, -2.5e-300], []],
                    "name": 'é\u2028"x',
                },
                "calc_version": "1",
                "attempt": 1,
            },
        ),
        (
            EventType.FAILED,
            {
                "error": {"type": "timeout", "message": "no time left"},
                "attempt": 3,
                "last_error": {"type": "crashed", "message": "exit code -9"},
            },
        ),
    ],
)
def test_events_are_written_byte_for_byte_as_the_model_does(ts, type_, data):
    """The outbox skips the pydantic model per event; what it writes must not differ from the model's bytes."""
    fast = wire.encode_event("j" * 32, "alice", 1043, type_, "stats.describe", data, ts)
    model = JobEvent(job_id="j" * 32, tenant="alice", seq=1043, type=type_, kind="stats.describe", data=data, ts=ts)
    assert fast == model_bytes(model) == wire.dumps(model)
    assert wire.load_event(fast).ts == ts


@pytest.mark.parametrize("ts", TIMES + [datetime(2026, 3, 1, 8, 0, tzinfo=timezone(timedelta(hours=2)))])
@pytest.mark.parametrize(
    "fields",
    [
        {"params": {"values": [1.5, -0.0, 1e300]}, "priority": 9, "timeout_s": 5.0},
        {"params": {}, "calc_version": "2", "replay_of": "a" * 32, "replay_id": "r1", "seq": 3, "schema_version": 7},
    ],
)
def test_requests_are_written_byte_for_byte_as_the_model_does(ts, fields):
    model = JobRequested(job_id="j1", tenant="t", kind="stats.describe", ts=ts, **fields)
    assert wire.dumps(model) == model_bytes(model)
    assert wire.decode_request(wire.dumps(model)) == model


def test_an_event_model_with_another_schema_version_keeps_it():
    model = JobEvent(schema_version=3, job_id="j", seq=0, type=EventType.QUEUED, kind="k", ts=TIMES[1])
    assert wire.dumps(model) == model_bytes(model)
    assert wire.load_event(wire.dumps(model)) == model


def test_a_model_field_the_encoder_does_not_write_stops_the_import():
    class Stamped(BaseModel):
        job_id: str
        nonce: str = Field(default_factory=lambda: uuid.uuid4().hex)

    with pytest.raises(RuntimeError, match="nonce"):
        wire._check_fields(Stamped, b'{"job_id":""}')
    wire._check_fields(Stamped, b'{"job_id":"","nonce":""}')
    with pytest.raises(RuntimeError):  # same fields, another order: not the model's bytes either
        wire._check_fields(Stamped, b'{"nonce":"","job_id":""}')


def test_a_canonical_event_is_decoded_without_copying_its_bytes():
    raw = wire.encode_event("j", "acme", 7, EventType.PROGRESS, "k", {"progress": 0.5}, TIMES[1])
    event = wire.decode_event(raw)
    assert event.raw is raw
    assert (
        event.type,
        event.job_id,
        event.tenant,
        event.seq,
        event.kind,
        event.ts,
        event.data,
        event.schema_version,
    ) == (EventType.PROGRESS, "j", "acme", 7, "k", TIMES[1], {"progress": 0.5}, 1)
    assert event.model() == JobEvent(
        job_id="j", tenant="acme", seq=7, type=EventType.PROGRESS, kind="k", data={"progress": 0.5}, ts=TIMES[1]
    )


@pytest.mark.parametrize(
    "raw, normalised",
    [
        # no tenant, version, data or zone: defaults filled in, read as UTC
        (
            b'{"job_id":"j","seq":0,"type":"queued","kind":"k","ts":"2026-01-01T00:00:00"}',
            b'{"schema_version":1,"job_id":"j","tenant":"default","seq":0,"ts":"2026-01-01T00:00:00Z","type":"queued",'
            b'"kind":"k","data":{}}',
        ),
        # fields the sink adds, and a line break: dropped, and one line again
        (
            b'{"schema_version":1,"job_id":"j","tenant":"t","seq":1,"ts":"2026-01-01T00:00:00Z","type":"running",\r\n'
            b'"kind":"k","data":{},"kafka_offset":"forged"}',
            b'{"schema_version":1,"job_id":"j","tenant":"t","seq":1,"ts":"2026-01-01T00:00:00Z","type":"running",'
            b'"kind":"k","data":{}}',
        ),
    ],
)
def test_a_valid_event_in_another_form_is_normalised(raw: bytes, normalised: bytes):
    event = wire.decode_event(raw)
    assert event.raw == normalised and event.ts.tzinfo is not None
    assert wire.decode_event(event.raw) == event


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        b"[1]",
        b'{"type":[1]}',
        b'{"job_id":"j"}',
        b'{"job_id":"j","seq":-1,"type":"queued","kind":"k"}',
        b'{"job_id":"j","seq":0,"type":"sleeping","kind":"k"}',
    ],
)
def test_anything_else_is_refused_with_a_value_error(raw: bytes | None):
    with pytest.raises(ValueError):
        wire.decode_event(raw)


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"job_id":"j","kind":"k","params":"oops"}'])
def test_a_malformed_request_is_a_value_error(raw: bytes):
    with pytest.raises(ValueError):
        wire.decode_request(raw)


# --- peek: the first fields of a canonical event, for readers that skip most events ---------------
@pytest.mark.parametrize("type_", list(EventType))
@pytest.mark.parametrize("job_id, tenant", [("j-1", "acme"), (str(uuid.uuid4()), "tenant é ✓"), ("", "")])
def test_peek_reads_type_job_and_tenant_of_every_canonical_event_as_the_decoder_does(
    type_: EventType, job_id: str, tenant: str
):
    data = {"params": {"type": "succeeded", "job_id": "other", "webhook": "x"}, "attempt": 1}
    raw = wire.encode_event(job_id, tenant, 3, type_, "stats.describe", data, TIMES[1])
    decoded = wire.decode_event(raw)
    assert wire.peek(raw) == (decoded.type.value, decoded.job_id, decoded.tenant) == (type_.value, job_id, tenant)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        b"not json",
        # valid events in another form: another field order (data before type), spaces, escapes
        b'{"job_id":"j","tenant":"t","seq":0,"data":{"type":"succeeded"},"type":"queued","kind":"k",'
        b'"ts":"2026-01-01T00:00:00Z"}',
        b'{"schema_version": 1, "job_id": "j", "tenant": "t", "seq": 0, "ts": "2026-01-01T00:00:00Z", '
        b'"type": "queued", "kind": "k", "data": {}}',
        b'{"schema_version":1,"job_id":"j","tenant":"a\\"b","seq":0,"ts":"2026-01-01T00:00:00Z","type":"queued",'
        b'"kind":"k","data":{}}',
        b'{"schema_version":1,"job_id":"j\\u0022","tenant":"t","seq":0,"ts":"2026-01-01T00:00:00Z","type":"queued",'
        b'"kind":"k","data":{}}',
    ],
)
def test_peek_leaves_anything_not_canonical_to_the_decoder(raw: bytes | None):
    assert wire.peek(raw) is None
