"""Result reuse against the real stack: hits answer at once from a past result with no new request
record, identical requests in flight join one job, nothing crosses tenants, the index survives an
API restart and is shared by a second API process, and what counts as "the same" is exact."""

from __future__ import annotations

import asyncio
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, SecretStr

from calculations import registry
from calculations.linear import FitParams
from calculations.stats import DescribeParams
from ingest_api.reuse import canonical_params, reuse_key
from jobstream.server import create_app
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.settings import Settings
from tests.support.kafka import record_count
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    return isolated(settings, api_keys=SecretStr(f"alice={ALICE},bob={BOB}"), reuse_max_age_s=3600)


@pytest.fixture(scope="module")
def worker(scoped: Settings) -> Iterator[Worker]:
    worker = Worker(scoped).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def api(scoped: Settings, store: ClickHouseStore, worker: Worker) -> Iterator[Server]:
    server = _serve(scoped, store)
    yield server
    server.stop()


def _serve(settings: Settings, store: ClickHouseStore, roles: frozenset[str] | None = None) -> Server:
    app = create_app(settings, store=store) if roles is None else create_app(settings, roles, store=store)
    server = Server(app).start()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 120, message="healthz")
    return server


def _client(base: str, key: str = ALICE) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"})


def _counter(tmp_path: Path) -> str:
    path = tmp_path / f"calcs-{uuid.uuid4().hex[:6]}"
    return str(path)


def _calcs(counter: str) -> int:
    path = Path(counter)
    return len(path.read_text().splitlines()) if path.exists() else 0


def _finished(client: httpx.Client, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, 60, 0.1, message=f"job {job_id} to finish")  # type: ignore[return-value]


def _requests(settings: Settings) -> int:
    return record_count(settings.kafka_bootstrap or "", settings.topic(topics.REQUESTED))


def _values() -> list[float]:
    return [float(uuid.uuid4().int % 1000), 2.0, 3.5]  # unique per test run: no reuse from earlier runs


# --- what counts as "the same" (unit) ------------------------------------------------------------
def _key(params: dict[str, Any], model: type[BaseModel] = DescribeParams, tenant: str = "t") -> bytes:
    return reuse_key(tenant, "k", "1", model.model_validate(params))


def test_key_order_integer_vs_float_and_defaults_do_not_matter():
    assert _key({"values": [1, 2]}) == _key({"values": [1.0, 2.0]})
    assert _key({"values": [1e2]}) == _key({"values": [100]})
    assert _key({"generate": {"n": 5, "seed": 1, "distribution": "normal"}}) == _key(
        {"generate": {"distribution": "normal", "seed": 1, "n": 5}}
    )
    explicit = {"x": [[1.0], [2.0]], "y": [1.0, 2.0], "intercept": True}
    assert _key({"y": [1, 2], "x": [[1], [2]]}, FitParams) == _key(explicit, FitParams)


def test_negative_zero_other_values_tenants_and_versions_do_matter():
    assert _key({"values": [-0.0]}) != _key({"values": [0.0]})
    assert _key({"values": [1, 2]}) != _key({"values": [2, 1]})
    assert _key({"values": [1.0]}, tenant="a") != _key({"values": [1.0]}, tenant="b")
    model = DescribeParams.model_validate({"values": [1.0]})
    assert reuse_key("t", "k", "1", model) != reuse_key("t", "k", "2", model)


def test_strings_are_compared_as_given_without_unicode_normalisation():
    class Named(BaseModel):
        name: str

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    assert canonical_params(Named(name=nfc)) != canonical_params(Named(name=nfd))
    assert _key({"name": nfc}, Named) != _key({"name": nfd}, Named)


def test_builtins_are_deterministic_and_a_plugin_must_say_so(api: Server):
    kinds = {
        k["kind"]: k for k in httpx.get(f"{api.url}/v1/kinds", headers={"Authorization": f"Bearer {ALICE}"}).json()
    }
    for kind in ("stats.describe", "linear.fit", "montecarlo.var", "test.counted"):
        assert kinds[kind]["deterministic"] is True
    assert kinds["test.work"]["deterministic"] is False
    assert registry.get("test.work").deterministic is False


# --- the real stack -----------------------------------------------------------------------------
def test_a_hit_answers_200_with_the_result_and_no_new_request(api: Server, scoped: Settings):
    values = _values()
    with _client(api.url) as client:
        first = client.post(
            "/v1/jobs", json={"kind": "stats.describe", "params": {"values": values}, "reuse": {"max_age_s": 600}}
        )
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        done = _finished(client, job_id)
        assert done["status"] == "succeeded"
        before = _requests(scoped)
        # the same params: integers where floats were, keys in another order, another priority
        again = client.post(
            "/v1/jobs",
            json={
                "reuse": {"max_age_s": 600},
                "params": {"values": [int(v) if v.is_integer() else v for v in values]},
                "kind": "stats.describe",
            },
        )
        assert again.status_code == 200, again.text
        body = again.json()
        assert body["reused_from"] == job_id == body["job_id"]
        assert again.headers["location"].endswith(f"/v1/jobs/{job_id}")
        assert body["status"] == "succeeded"
        assert body["result"] == done["result"]
        assert _requests(scoped) == before
        # -0.0 is not 0.0: a new job
        other = client.post(
            "/v1/jobs",
            json={"kind": "stats.describe", "params": {"values": [*values, -0.0]}, "reuse": {"max_age_s": 600}},
        )
        assert other.status_code == 202 and other.json()["job_id"] != job_id


def test_without_reuse_nothing_is_reused_and_reuse_does_not_find_plain_jobs(api: Server):
    values = _values()
    with _client(api.url) as client:
        plain = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": values}}).json()["job_id"]
        _finished(client, plain)
        asked = client.post(
            "/v1/jobs", json={"kind": "stats.describe", "params": {"values": values}, "reuse": {"max_age_s": 600}}
        )
        assert asked.status_code == 202 and asked.json()["job_id"] != plain
        _finished(client, asked.json()["job_id"])
        again = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": values}})
        assert again.status_code == 202 and again.json()["job_id"] not in (plain, asked.json()["job_id"])


def test_a_result_older_than_max_age_s_is_not_reused(api: Server, tmp_path: Path):
    counter = _counter(tmp_path)
    job = {"kind": "test.counted", "params": {"x": 3, "counter": counter}, "reuse": {"max_age_s": 1}}
    with _client(api.url) as client:
        first = client.post("/v1/jobs", json=job).json()["job_id"]
        finished_at = datetime.fromisoformat(_finished(client, first)["finished_at"])
        wait_until(lambda: (datetime.now(finished_at.tzinfo) - finished_at).total_seconds() > 1.2, 10)
        late = client.post("/v1/jobs", json=job)
        assert late.status_code == 202 and late.json()["job_id"] != first
        _finished(client, late.json()["job_id"])
        assert _calcs(counter) == 2
        # a longer max_age_s still reuses the newer one
        hit = client.post("/v1/jobs", json={**job, "reuse": {"max_age_s": 600}})
        assert hit.status_code == 200 and hit.json()["reused_from"] == late.json()["job_id"]


def test_identical_requests_in_flight_join_one_job_and_one_calculation(api: Server, tmp_path: Path):
    counter = _counter(tmp_path)
    job = {"kind": "test.counted", "params": {"x": 7, "sleep_s": 3, "counter": counter}, "reuse": {"max_age_s": 60}}

    async def herd() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {ALICE}"}
        async with httpx.AsyncClient(base_url=api.url, timeout=60, headers=headers) as client:
            return await asyncio.gather(*(client.post("/v1/jobs", json=job) for _ in range(50)))

    answers = asyncio.run(herd())
    # 202 while the job runs; a late answer may already be a 200 hit of the same job
    assert {a.status_code for a in answers} <= {200, 202}, [a.text for a in answers if a.status_code >= 300]
    assert sum(1 for a in answers if a.status_code == 202) > 1
    ids = {a.json()["job_id"] for a in answers}
    assert len(ids) == 1
    assert sum(1 for a in answers if a.json().get("reused_from")) == 49
    with _client(api.url) as client:
        assert _finished(client, ids.pop())["result"] == {"y": 49.0}
    assert _calcs(counter) == 1


def test_reuse_never_crosses_tenants(api: Server, tmp_path: Path):
    job = {"kind": "test.counted", "params": {"x": 2, "counter": _counter(tmp_path)}, "reuse": {"max_age_s": 600}}
    with _client(api.url, ALICE) as alice, _client(api.url, BOB) as bob:
        mine = alice.post("/v1/jobs", json=job).json()["job_id"]
        _finished(alice, mine)
        theirs = bob.post("/v1/jobs", json=job)
        assert theirs.status_code == 202 and theirs.json()["job_id"] != mine
        assert alice.post("/v1/jobs", json=job).status_code == 200


def test_a_non_deterministic_kind_refuses_reuse_with_the_reason(api: Server):
    with _client(api.url) as client:
        answer = client.post("/v1/jobs", json={"kind": "test.work", "params": {}, "reuse": {"max_age_s": 10}})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["errors"][0]["field"] == "reuse"
    assert "not deterministic" in problem["detail"]


@pytest.mark.parametrize(
    ("reuse", "field"),
    [
        ("yes", "reuse"),
        ([60], "reuse"),
        ({}, "reuse.max_age_s"),
        ({"max_age_s": -1}, "reuse.max_age_s"),
        ({"max_age_s": 3601}, "reuse.max_age_s"),  # past JOBSTREAM_REUSE_MAX_AGE_S
        ({"max_age_s": 1e308}, "reuse.max_age_s"),
        ({"max_age_s": 10**30}, "reuse.max_age_s"),
        ({"max_age_s": True}, "reuse.max_age_s"),
        ({"max_age_s": "60"}, "reuse.max_age_s"),
        ({"max_age_s": None}, "reuse.max_age_s"),
        ({"max_age_s": 60, "mäx_äge": 1}, "reuse.mäx_äge"),
    ],
)
def test_bad_reuse_is_a_422_naming_the_field(api: Server, reuse: Any, field: str):
    job = {"kind": "stats.describe", "params": {"values": [1]}, "reuse": reuse}
    with _client(api.url) as client:
        single = client.post("/v1/jobs", json=job)
        batch = client.post("/v1/jobs:batch", json={"jobs": [job]})
    assert single.status_code == 422, single.text
    assert single.headers["content-type"].startswith("application/problem+json")
    assert field in [e["field"] for e in single.json()["errors"]]
    assert batch.status_code == 422, batch.text
    assert f"jobs.0.{field}" in [e["field"] for e in batch.json()["jobs"][0]["error"]["errors"]]


def test_batch_items_reuse_each_on_their_own(api: Server, tmp_path: Path):
    counter = _counter(tmp_path)
    done = {"kind": "test.counted", "params": {"x": 4, "counter": counter}, "reuse": {"max_age_s": 600}}
    fresh = {"kind": "test.counted", "params": {"x": 5, "counter": counter}, "reuse": {"max_age_s": 600}}
    with _client(api.url) as client:
        earlier = client.post("/v1/jobs", json=done).json()["job_id"]
        _finished(client, earlier)
        answer = client.post(
            "/v1/jobs:batch", json={"jobs": [done, fresh, fresh, {"kind": "test.counted", "params": fresh["params"]}]}
        )
        assert answer.status_code == 202, answer.text
        body = answer.json()
        items = body["jobs"]
        assert items[0]["reused_from"] == earlier and items[0]["status"] == "succeeded"
        assert "reused_from" not in items[1]
        assert items[2]["reused_from"] == items[1]["job_id"]  # same batch: joins the first
        assert "reused_from" not in items[3] and items[3]["job_id"] != items[1]["job_id"]  # no reuse asked
        assert (body["accepted"], body["reused"], body["rejected"]) == (2, 2, 0)
        _finished(client, items[1]["job_id"])
        _finished(client, items[3]["job_id"])
    assert _calcs(counter) == 3


def test_an_idempotency_key_comes_first(api: Server, tmp_path: Path):
    job = {"kind": "test.counted", "params": {"x": 6, "counter": _counter(tmp_path)}, "reuse": {"max_age_s": 600}}
    with _client(api.url) as client:
        original = client.post("/v1/jobs", json=job).json()["job_id"]
        _finished(client, original)
        key = {"Idempotency-Key": uuid.uuid4().hex}
        keyed = client.post("/v1/jobs", json=job, headers=key)
        assert keyed.status_code == 200 and keyed.json()["reused_from"] == original
        retry = client.post("/v1/jobs", json=job, headers=key)  # the key's answer: that same job
        assert retry.status_code == 200 and retry.json()["job_id"] == original
        other = client.post("/v1/jobs", json={**job, "params": {**job["params"], "x": 8}}, headers=key)
        assert other.status_code == 409


def test_reused_answers_are_counted_apart_and_add_no_result_row(api: Server, store: ClickHouseStore, tmp_path: Path):
    job = {"kind": "test.counted", "params": {"x": 9, "counter": _counter(tmp_path)}, "reuse": {"max_age_s": 600}}
    with _client(api.url) as client:
        job_id = client.post("/v1/jobs", json=job).json()["job_id"]
        _finished(client, job_id)
        results = "SELECT count() FROM job_results WHERE job_id = {j:String}"
        # the sink wrote the job (its queued event comes first): /v1/stats counts it from now on
        wait_until(lambda: store.query(results, {"j": job_id}) == [(1,)], 30, 0.1, message="the sink")
        before = client.get("/v1/stats", params={"kind": "test.counted"}).json()
        for _ in range(3):
            assert client.post("/v1/jobs", json=job).status_code == 200
        wait_until(
            lambda: client.get("/v1/stats", params={"kind": "test.counted"}).json()["reused"] >= before["reused"] + 3,
            30,
            0.2,
            message="/v1/stats to count the reused answers",
        )
        stats = client.get("/v1/stats", params={"kind": "test.counted"}).json()
        assert stats["reused_by"]["hit"] >= before["reused_by"]["hit"] + 3
        assert stats["submitted"] == before["submitted"]
    assert store.query(results, {"j": job_id}) == [(1,)]
    ((reused,),) = store.query(
        "SELECT sum(reused) FROM reuse_stats WHERE tenant = 'alice' AND kind = 'test.counted' AND how = 'hit'"
    )
    assert reused >= 3


def test_the_index_survives_an_api_restart_and_is_shared_with_another_api(
    scoped: Settings, store: ClickHouseStore, worker: Worker, tmp_path: Path
):
    job = {"kind": "test.counted", "params": {"x": 11, "counter": _counter(tmp_path)}, "reuse": {"max_age_s": 600}}
    first = _serve(scoped, store)
    try:
        with _client(first.url) as client:
            job_id = client.post("/v1/jobs", json=job).json()["job_id"]
            _finished(client, job_id)
    finally:
        first.stop()
    for roles in (None, frozenset({"api"})):  # a restarted API process; another API-only process
        again = _serve(scoped, store, roles)
        try:
            with _client(again.url) as client:
                answer = client.post("/v1/jobs", json=job)
                assert answer.status_code == 200, answer.text
                assert answer.json()["reused_from"] == job_id
        finally:
            again.stop()


def test_a_submission_without_reuse_keeps_the_fingerprint_it_had_before_the_field():
    import hashlib

    import orjson

    from ingest_api.submit import JobSubmission

    body = JobSubmission.model_validate({"kind": "k", "params": {"x": 1}})
    before = orjson.dumps(
        {"kind": "k", "params": {"x": 1}, "priority": 0, "timeout_s": None}, option=orjson.OPT_SORT_KEYS
    )
    assert body.fingerprint() == "v2:" + hashlib.sha256(before).hexdigest()
    assert JobSubmission.model_validate({"kind": "k", "params": {"x": 1}, "reuse": {"max_age_s": 5}}).fingerprint() != (
        body.fingerprint()
    )


def test_prefer_wait_with_reuse_waits_for_the_job_that_answers(api: Server, tmp_path: Path):
    job = {
        "kind": "test.counted",
        "params": {"x": 12, "sleep_s": 1, "counter": _counter(tmp_path)},
        "reuse": {"max_age_s": 600},
    }
    wait = {"Prefer": "wait=20"}
    with _client(api.url) as client:
        first = client.post("/v1/jobs", json=job).json()["job_id"]
        joined = client.post("/v1/jobs", json=job, headers=wait)  # joins the running job, waits for it
        assert joined.status_code == 200, joined.text
        assert joined.json()["job_id"] == first and joined.json()["status"] == "succeeded"
        assert joined.json()["result"] == {"y": 144.0}
        hit = client.post("/v1/jobs", json=job, headers=wait)  # finished already: the hit is the answer
        assert hit.status_code == 200, hit.text
        assert hit.json()["reused_from"] == first and hit.json()["result"] == {"y": 144.0}
