"""The ingest API's contract against the real broker: idempotency, batches, listing,
auth and tenants, bad input, Kafka outages and backpressure."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from jobstream.server import create_app
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.local_kafka import LocalKafka
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support.kafka import requests_for
from tests.support.servers import Server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
JOB = {"kind": "stats.describe", "params": {"values": [1, 2, 3]}}


@pytest.fixture(scope="module")
def keyed(stack: str, settings: Settings, store: ClickHouseStore) -> Iterator[Server]:
    """A second API + gateway on the same topics (the stack's worker and sink serve it), with API keys."""
    keyed_settings = settings.model_copy(
        update={"api_keys": SecretStr(f"alice={ALICE},bob={BOB}"), "max_body_bytes": 4096}
    )
    server = Server(create_app(keyed_settings, {"api", "gateway"}, store=store))
    server.start()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="keyed API ready")
    yield server
    server.stop()


def as_(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_wrong_content_type_is_415(client: httpx.Client):
    response = client.post("/v1/jobs", content=b"kind=stats.describe", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and response.headers["content-type"] == "application/problem+json"


def test_body_over_the_limit_is_413_and_nothing_is_produced(keyed: Server):
    big = {"kind": "stats.describe", "params": {"values": list(range(2000))}}
    response = httpx.post(f"{keyed.url}/v1/jobs", json=big, headers=as_(ALICE))
    assert response.status_code == 413 and response.json()["limit_bytes"] == 4096


def test_bad_priority_and_timeout_name_their_fields(client: httpx.Client):
    response = client.post("/v1/jobs", json={**JOB, "priority": 10, "timeout_s": -1})
    assert response.status_code == 422
    assert {e["field"] for e in response.json()["errors"]} == {"priority", "timeout_s"}


def test_idempotency_key_returns_the_same_job_once(
    client: httpx.Client, settings: Settings, stack: str, store: ClickHouseStore
):
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = client.post("/v1/jobs", json=JOB, headers=key)
    second = client.post("/v1/jobs", json=JOB, headers=key)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["job_id"] == second.json()["job_id"]
    job_id = first.json()["job_id"]

    other = client.post("/v1/jobs", json={**JOB, "params": {"values": [9]}}, headers=key)
    assert other.status_code == 409 and other.json()["errors"][0]["field"] == "Idempotency-Key"

    # The key survives a restart: a brand-new API process reads it back from Kafka.
    restarted = Server(create_app(settings, {"api"}, store=store)).start()
    try:
        wait_until(lambda: httpx.get(f"{restarted.url}/healthz").status_code == 200, 60, message="restarted API")
        again = httpx.post(f"{restarted.url}/v1/jobs", json=JOB, headers=key)
        assert again.status_code == 200 and again.json()["job_id"] == job_id
    finally:
        restarted.stop()
    assert requests_for(settings.kafka_bootstrap or "", settings.topic(topics.REQUESTED), job_id) == 1
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", message="job done")


def test_batch_accepts_the_valid_and_reports_each_invalid(client: httpx.Client):
    jobs = [JOB, {"kind": "stats.describe", "params": {"values": []}}, {"kind": "nope"}, JOB]
    response = client.post("/v1/jobs:batch", json={"jobs": jobs})
    assert response.status_code == 202
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (2, 2)
    items = body["jobs"]
    assert [i["index"] for i in items] == [0, 1, 2, 3]
    assert items[1]["error"]["errors"][0]["field"] == "jobs.1.params.values"
    assert {e["field"] for e in items[2]["error"]["errors"]} == {"jobs.2.params"}
    for item in (items[0], items[3]):
        job_id = item["job_id"]
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded", message="batch job")


def test_batch_over_the_maximum_is_422(client: httpx.Client, settings: Settings):
    response = client.post("/v1/jobs:batch", json={"jobs": [JOB] * (settings.batch_max_jobs + 1)})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "jobs"


def test_auth_is_required_and_tenants_are_isolated(keyed: Server):
    url = keyed.url
    assert httpx.post(f"{url}/v1/jobs", json=JOB).status_code == 401
    assert httpx.get(f"{url}/v1/jobs", headers=as_("wrong-key-0123456789")).status_code == 401
    assert httpx.get(f"{url}/healthz").status_code == 200  # the one open route

    job_id = httpx.post(f"{url}/v1/jobs", json=JOB, headers=as_(ALICE)).json()["job_id"]
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=as_(ALICE)).status_code == 200
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/events"):
        response = httpx.get(f"{url}{path}", headers=as_(BOB))
        assert response.status_code == 404, path  # as if it did not exist
    wait_until(
        lambda: httpx.get(f"{url}/v1/jobs/{job_id}", headers=as_(ALICE)).json()["status"] == "succeeded",
        message="alice's job",
    )
    bobs = httpx.get(f"{url}/v1/jobs", headers=as_(BOB)).json()["jobs"]
    assert job_id not in {j["job_id"] for j in bobs}


def test_listing_is_newest_first_filtered_and_paginated(keyed: Server):
    url, headers = keyed.url, as_(BOB)
    ids = [httpx.post(f"{url}/v1/jobs", json=JOB, headers=headers).json()["job_id"] for _ in range(5)]
    for job_id in ids:
        wait_until(
            lambda: httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["status"] == "succeeded",
            message="bob's jobs",
        )
    wait_until(
        lambda: len(httpx.get(f"{url}/v1/jobs", params={"status": "succeeded"}, headers=headers).json()["jobs"]) >= 5,
        message="listing catches up",
    )
    seen, cursor = [], None
    while True:
        params = {"limit": 2, "status": "succeeded", "kind": "stats.describe", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(f"{url}/v1/jobs", params=params, headers=headers).json()
        assert len(page["jobs"]) <= 2
        seen += page["jobs"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [j["job_id"] for j in seen if j["job_id"] in ids] == list(reversed(ids))
    assert [j["submitted_at"] for j in seen] == sorted((j["submitted_at"] for j in seen), reverse=True)
    assert httpx.get(f"{url}/v1/jobs", params={"status": "failed"}, headers=headers).json()["jobs"] == []
    assert httpx.get(f"{url}/v1/jobs", params={"cursor": "garbage"}, headers=headers).status_code == 400


def test_kafka_down_is_503_with_retry_after_never_202(tmp_path: Path, settings: Settings, store: ClickHouseStore):
    broker = LocalKafka(tmp_path / "kafka").start()
    local = settings.model_copy(update={"produce_timeout_s": 2.0, "kafka_bootstrap": broker.bootstrap})
    ensure_topics(KafkaConnection.from_settings(local), local)
    server = Server(create_app(local, {"api"}, store=store)).start()
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="API on own broker")
        assert httpx.post(f"{server.url}/v1/jobs", json=JOB).status_code == 202
        broker.stop()
        response = httpx.post(f"{server.url}/v1/jobs", json=JOB, timeout=30)
        assert response.status_code == 503
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["content-type"] == "application/problem+json"
    finally:
        server.stop()
        broker.stop()


def test_backpressure_is_429_once_processors_lag_past_the_bound(settings: Settings, store: ClickHouseStore):
    # Own topics and no worker: every accepted job stays queued, so the lag only grows.
    local = settings.model_copy(
        update={"topic_prefix": f"bp{uuid.uuid4().hex[:6]}.", "max_queued_jobs": 3, "lag_check_s": 0.1}
    )
    ensure_topics(KafkaConnection.from_settings(local), local)
    server = Server(create_app(local, {"api"}, store=store)).start()
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="API ready")
        accepted = []
        response = None

        def submit_until_refused() -> bool:
            nonlocal response
            response = httpx.post(f"{server.url}/v1/jobs", json=JOB)
            if response.status_code == 202:
                accepted.append(response.json()["job_id"])
            return response.status_code == 429

        wait_until(submit_until_refused, 30, message="a 429")
        assert len(accepted) >= 3
        assert response is not None and int(response.headers["retry-after"]) >= 1
        assert response.json()["queued_jobs"] >= 3

        # A queued job: status and result both say "later" with Retry-After.
        status = httpx.get(f"{server.url}/v1/jobs/{accepted[0]}")
        assert status.json()["status"] == "queued" and int(status.headers["retry-after"]) >= 1
        pending = httpx.get(f"{server.url}/v1/jobs/{accepted[0]}/result")
        assert pending.status_code == 202 and pending.headers["location"] == f"/v1/jobs/{accepted[0]}"
    finally:
        server.stop()


def test_cancelled_job_has_no_result_and_cannot_be_cancelled_again(client: httpx.Client):
    n = 20
    slow = {
        "kind": "montecarlo.var",
        "params": {
            "weights": [1 / n] * n,
            "mu": [0.0] * n,
            "cov": [[1e-4 if i == j else 0.0 for j in range(n)] for i in range(n)],
            "horizon_days": 1,
            "paths": 10_000_000,
            "confidence": 0.99,
            "seed": 3,
        },
    }
    job_id = client.post("/v1/jobs", json=slow).json()["job_id"]
    cancel = client.delete(f"/v1/jobs/{job_id}")
    assert cancel.status_code == 202 and cancel.headers["location"] == f"/v1/jobs/{job_id}"
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled", 120, message="cancelled")
    result = client.get(f"/v1/jobs/{job_id}/result")
    assert result.status_code == 409 and result.headers["content-type"] == "application/problem+json"
    again = client.post(f"/v1/jobs/{job_id}:cancel")
    assert again.status_code == 409 and again.json()["status_now"] == "cancelled"


def test_up_refuses_an_open_bind_without_api_keys(monkeypatch: pytest.MonkeyPatch):
    from typer.testing import CliRunner

    from jobstream.cli import app

    monkeypatch.delenv("JOBSTREAM_API_KEYS", raising=False)
    monkeypatch.delenv("JOBSTREAM_API_KEYS_FILE", raising=False)
    outcome = CliRunner().invoke(app, ["up", "--host", "0.0.0.0"])
    assert outcome.exit_code != 0 and "refusing to bind 0.0.0.0 without API keys" in outcome.output


def test_integers_past_64_bits_are_a_422_even_with_an_idempotency_key(client: httpx.Client):
    """Found by schemathesis: orjson cannot encode them, which used to be a 500."""
    body = {"kind": "stats.describe", "params": {"values": [1], "big": [2**70]}}
    response = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": f"big-{uuid.uuid4()}"})
    assert response.status_code == 422 and response.headers["content-type"] == "application/problem+json"
