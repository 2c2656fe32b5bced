"""The submit fast path keeps the contract: the wire records are byte for byte what the event
models write, the answers match their documented models, and the producer acknowledges every
message of every concurrent ``send_many``, in order."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from ingest_api.routes import Accepted, BatchAccepted
from ingest_api.submit import InvalidSubmission, JobSubmission, prepare
from jobstream.server import create_app
from store.clickhouse import ClickHouseStore
from streams import topics, wire
from streams.events import EventType, JobEvent, JobRequested
from streams.kafka_config import KafkaConnection
from streams.producer import AsyncProducer, Outgoing, ProduceError
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import decode_request, load_event
from tests.support.servers import Server
from tests.support.waiting import wait_until

JOB = {"kind": "stats.describe", "params": {"values": [1, 2, 3]}}

SUBMISSIONS: list[dict[str, Any]] = [
    JOB,
    {"kind": "stats.describe", "params": {"values": [1.5, -0.0, 1e300]}, "priority": 9, "timeout_s": 5},
    {
        "kind": "stats.describe",
        "params": {"generate": {"distribution": "normal", "n": 10, "seed": 2**62}},
        "timeout_s": 0.25,
    },
]


@pytest.mark.parametrize("raw", SUBMISSIONS)
@pytest.mark.parametrize("ts", [None, datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)])
def test_records_are_byte_for_byte_what_the_models_write(
    raw: dict[str, Any], ts: datetime | None, monkeypatch: pytest.MonkeyPatch
):
    if ts is not None:  # a whole second: pydantic then writes no fraction, and neither may we
        monkeypatch.setattr(wire, "utcnow", lambda: ts)
    body = JobSubmission.model_validate(raw)
    job = prepare(body, "alice")
    request = JobRequested(
        job_id=job.job_id,
        tenant="alice",
        ts=job.ts,
        kind=body.kind,
        params=body.params,
        priority=body.priority,
        timeout_s=body.timeout_s,
    )
    queued = JobEvent(
        job_id=job.job_id,
        tenant="alice",
        seq=0,
        ts=job.ts,
        type=EventType.QUEUED,
        kind=body.kind,
        data={"priority": body.priority, "timeout_s": body.timeout_s, "params": body.params},
    )
    assert job.request == orjson.dumps(request.model_dump(mode="json"))  # the models' own serialisation
    assert job.queued_value == orjson.dumps(queued.model_dump(mode="json"))
    assert job.queued == load_event(job.queued_value) == queued
    assert decode_request(job.request) == request


def test_idempotent_submissions_keep_their_derived_id():
    job = prepare(JobSubmission.model_validate(JOB), "alice", job_id="fixed")
    assert job.job_id == decode_request(job.request).job_id == load_event(job.queued_value).job_id == "fixed"


def test_integers_past_64_bits_cannot_become_a_record():
    body = JobSubmission.model_validate({"kind": "stats.describe", "params": {"values": [1, 2**70]}})
    with pytest.raises(InvalidSubmission) as caught:
        prepare(body, "alice")
    assert caught.value.errors[0]["field"] == "params"


@pytest.mark.kafka
def test_accepted_answer_matches_its_documented_model(client: httpx.Client):
    response = client.post("/v1/jobs", json=JOB)
    assert response.status_code == 202 and response.headers["content-type"] == "application/json"
    accepted = Accepted.model_validate(response.json())
    assert accepted.status == "queued" and response.headers["location"] == accepted.links.self
    assert accepted.links.events == f"{accepted.links.self}/events"
    assert int(response.headers["retry-after"]) >= 1
    assert client.get(accepted.links.self).json()["status"] in {"queued", "running", "succeeded"}


@pytest.mark.kafka
def test_a_repeated_idempotent_submit_answers_200_with_the_same_body(client: httpx.Client):
    key = {"Idempotency-Key": f"same-{uuid.uuid4()}"}
    first = client.post("/v1/jobs", json=JOB, headers=key)
    again = client.post("/v1/jobs", json=JOB, headers=key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == first.json() and again.headers["location"] == first.headers["location"]


@pytest.mark.kafka
@pytest.mark.parametrize(
    "content, headers, status, field",
    [
        (b"", {}, 422, "(body)"),
        (b"[1, 2]", {}, 422, "(body)"),
        (b'{"kind": "stats.describe"}', {}, 422, "params"),
        (b'{"kind": "stats.describe", "params": {}, "color": "red"}', {}, 422, "color"),
        (b'{"kind": ', {}, 400, None),
        (
            b'{"kind": "stats.describe", "params": {"values": [1]}}',
            {"Idempotency-Key": "k" * 256},
            400,
            "Idempotency-Key",
        ),
    ],
)
def test_bad_submits_are_problems_naming_the_field(
    client: httpx.Client, content: bytes, headers: dict[str, str], status: int, field: str | None
):
    response = client.post("/v1/jobs", content=content, headers={"Content-Type": "application/json", **headers})
    assert response.status_code == status and response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status
    if field is not None:
        assert field in {e["field"] for e in problem["errors"]}


@pytest.mark.kafka
def test_the_fastapi_route_answers_like_the_shortcut(client: httpx.Client, settings: Settings, store: ClickHouseStore):
    """Behind a root_path the shortcut steps aside and FastAPI's route serves the same function."""
    routed = Server(create_app(settings, {"api"}, store=store))
    routed.server.config.root_path = "/behind-a-proxy"
    routed.start()
    try:
        wait_until(lambda: httpx.get(f"{routed.url}/healthz").status_code == 200, 60, message="routed API ready")
        big_and_bad = b'{"kind": "stats.describe", "params": {"values": [' + b'"x",' * 100_000 + b'"x"]}}'
        for content, extra in (
            (b'{"kind": "stats.describe", "params": {"values": [1]}}', {}),
            (b'{"kind": "nope", "params": {}}', {}),
            (b'{"kind": ', {}),
            (b"", {}),
            (b'{"kind": "stats.describe", "params": {"values": [true]}}', {}),
            (b'{"kind": "stats.describe", "params": {"values": [1]}, "priority": "1"}', {}),
            (big_and_bad, {}),
            (b'{"kind": "stats.describe", "params": {"values": [1]}}', {"Idempotency-Key": "a key with spaces"}),
        ):
            headers = {"Content-Type": "application/json", **extra}
            short, long = (
                client.post("/v1/jobs", content=content, headers=headers),
                httpx.post(f"{routed.url}/v1/jobs", content=content, headers=headers),
            )
            assert (short.status_code, short.headers["content-type"]) == (
                long.status_code,
                long.headers["content-type"],
            )
            if short.status_code == 202:
                assert Accepted.model_validate(long.json()).links.self.endswith(long.json()["job_id"])
            else:
                assert short.json() == long.json()
    finally:
        routed.stop()


@pytest.mark.kafka
def test_batch_answer_matches_its_documented_model_with_every_field(client: httpx.Client):
    response = client.post("/v1/jobs:batch", json={"jobs": [JOB, {"kind": "nope", "params": {}}]})
    assert response.status_code == 202 and response.headers["content-type"] == "application/json"
    body = response.json()
    BatchAccepted.model_validate(body)
    assert [set(item) for item in body["jobs"]] == [{"index", "job_id", "status", "links", "error"}] * 2
    assert body["jobs"][0]["error"] is None and body["jobs"][1]["job_id"] is None
    assert body["jobs"][1]["error"]["known_kinds"]
    nothing_valid = client.post("/v1/jobs:batch", json={"jobs": [{"kind": "nope", "params": {}}]})
    assert nothing_valid.status_code == 422 and BatchAccepted.model_validate(nothing_valid.json()).accepted == 0


@pytest.mark.kafka
def test_concurrent_send_many_each_get_every_ack_in_order(settings: Settings):
    own = settings.model_copy(update={"topic_prefix": f"p{uuid.uuid4().hex[:8]}."})  # not the stack's topics
    ensure_topics(KafkaConnection.from_settings(own), own)
    requested, events = own.topic(topics.REQUESTED), own.topic(topics.EVENTS)
    producer = AsyncProducer(KafkaConnection.from_settings(own), own.produce_timeout_s)

    async def one(i: int) -> None:
        key = f"send-{i}".encode()
        messages = [Outgoing(requested, key, b"{}"), Outgoing(events, key, b"{}"), Outgoing(events, key, b"{}")]
        delivered = await producer.send_many(messages)
        assert [d.topic for d in delivered] == [requested, events, events]
        assert delivered[1].partition == delivered[2].partition and delivered[1].offset < delivered[2].offset

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(200)))
        assert await producer.send_many([]) == []
        with pytest.raises(ProduceError):
            await producer.send_many([Outgoing("not a valid topic name!", b"k", b"{}")])

    try:
        asyncio.run(main())
    finally:
        producer.close()
