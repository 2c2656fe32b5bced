"""End to end through the real broker, a real Faust worker process and ClickHouse.

submit → 202 → SSE stream to the terminal event → result equals numpy → rows in ClickHouse.
"""

from __future__ import annotations

import httpx
import numpy as np
import orjson
import pytest
from httpx_sse import connect_sse

from store.clickhouse import ClickHouseStore
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


def submit(client: httpx.Client, params: dict, kind: str = "stats.describe") -> httpx.Response:
    return client.post("/v1/jobs", json={"kind": kind, "params": params})


def stream_events(client: httpx.Client, url: str, **headers: str) -> list:
    with connect_sse(client, "GET", url, headers=headers, timeout=httpx.Timeout(60, read=60)) as source:
        assert source.response.headers["content-type"].startswith("text/event-stream")
        assert source.response.headers["x-accel-buffering"] == "no"
        return list(source.iter_sse())


def test_job_goes_queued_running_succeeded_with_numpys_numbers(client: httpx.Client, store: ClickHouseStore):
    values = np.random.default_rng(1).normal(size=2_000)
    response = submit(client, {"values": values.tolist()})

    assert response.status_code == 202
    body = response.json()
    job_id = body["job_id"]
    assert body["status"] == "queued"
    assert body["links"] == {
        "self": f"/v1/jobs/{job_id}",
        "events": f"/v1/jobs/{job_id}/events",
        "result": f"/v1/jobs/{job_id}/result",
    }
    assert response.headers["location"] == body["links"]["self"]
    assert int(response.headers["retry-after"]) >= 1

    # Read-your-writes: right after the 202 the job exists.
    first = client.get(body["links"]["self"])
    assert first.status_code == 200 and first.json()["status"] in {"queued", "running", "succeeded"}

    events = stream_events(client, body["links"]["events"])
    types = [e.event for e in events]
    assert types == ["queued", "running", "succeeded"]  # no progress point: running is 0, succeeded is 1
    ids = [int(e.id) for e in events]  # seq ids: strictly increasing, not contiguous; the terminal one is fixed
    assert ids == sorted(set(ids)) and ids[0] == 0 and ids[-1] == 2**31 - 1

    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    want = {
        "count": 2000,
        "mean": values.mean(),
        "std": values.std(),
        "min": values.min(),
        "max": values.max(),
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }
    result = orjson.loads(events[-1].data)["data"]["result"]
    assert result == pytest.approx(want, rel=1e-12)

    status = wait_until(
        lambda: (r := client.get(f"/v1/jobs/{job_id}").json())["status"] == "succeeded" and r,
        message="status succeeded",
    )
    assert status["progress"] == 1.0 and status["result"] == pytest.approx(want, rel=1e-12)
    assert status["submitted_at"] <= status["started_at"] <= status["finished_at"]
    assert client.get(f"/v1/jobs/{job_id}/result").json()["result"] == pytest.approx(want, rel=1e-12)

    # Every event and the result landed in ClickHouse, once.
    rows = wait_until(
        lambda: (
            (r := store.query("SELECT seq, type FROM job_events WHERE job_id = {j:String} ORDER BY seq", {"j": job_id}))
            and len(r) == len(events)
            and r
        ),
        message="events in ClickHouse",
    )
    assert [t for _, t in rows] == types
    (stored,) = store.query(
        "SELECT result, calc_version, kind FROM job_results WHERE job_id = {j:String}", {"j": job_id}
    )
    assert orjson.loads(stored[0]) == pytest.approx(want, rel=1e-12) and stored[1:] == ("1", "stats.describe")


def test_many_generated_jobs_all_succeed_in_batches(client: httpx.Client):
    job_ids = [
        submit(client, {"generate": {"distribution": "uniform", "n": 1000, "seed": s}}).json()["job_id"]
        for s in range(20)
    ]
    for seed, job_id in enumerate(job_ids):
        events = stream_events(client, f"/v1/jobs/{job_id}/events")
        assert events[-1].event == "succeeded"
        sample = np.random.default_rng(seed).random(1000)
        assert orjson.loads(events[-1].data)["data"]["result"]["mean"] == pytest.approx(sample.mean(), rel=1e-12)
    sizes = {
        orjson.loads(e.data)["data"]["batch_size"]
        for job_id in job_ids[-5:]
        for e in stream_events(client, f"/v1/jobs/{job_id}/events")
        if e.event == "running"
    }
    assert sizes and all(s >= 1 for s in sizes)


def test_late_client_replays_history_and_resumes_after_last_event_id(client: httpx.Client):
    job_id = submit(client, {"values": [1, 2, 3]}).json()["job_id"]
    first = stream_events(client, f"/v1/jobs/{job_id}/events")
    assert first[-1].event == "succeeded"
    again = stream_events(client, f"/v1/jobs/{job_id}/events")  # finished job: history, then close
    assert [(e.id, e.event) for e in again] == [(e.id, e.event) for e in first]
    resumed = stream_events(client, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": first[1].id})
    assert [e.id for e in resumed] == [e.id for e in first[2:]]


def test_unknown_job_is_404_problem_json(client: httpx.Client):
    for path in ("/v1/jobs/does-not-exist", "/v1/jobs/does-not-exist/result", "/v1/jobs/does-not-exist/events"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 404 and response.json()["title"] == "Job not found"


def test_invalid_params_are_422_naming_the_field(client: httpx.Client):
    response = submit(client, {"values": [1, "x"]})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert {"field": "params.values.1", "reason": response.json()["errors"][0]["reason"]} in response.json()["errors"]


def test_unknown_kind_is_422_listing_known_kinds(client: httpx.Client):
    response = submit(client, {}, kind="nope.nothing")
    assert response.status_code == 422
    assert "stats.describe" in response.json()["known_kinds"]


def test_malformed_json_is_400(client: httpx.Client):
    response = client.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.headers["content-type"] == "application/problem+json"


def test_healthz_and_kinds(client: httpx.Client):
    assert client.get("/healthz").json() == {"status": "ok"}
    kinds = {k["kind"]: k for k in client.get("/v1/kinds").json()}
    assert kinds["stats.describe"]["version"] == "1" and "properties" in kinds["stats.describe"]["params"]
