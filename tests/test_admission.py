"""Per-tenant admission, deadlines to start, and queue positions (issue 17), against the real broker."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from ingest_api.admission import Admission, AdmissionConfig
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.backlog import TenantBacklog
from streams.events import EventType, JobRequested, utcnow
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import decode_request, dumps, encode_event
from tests.support.sse import app_state, bearer, gateway, keys
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

JOB = {"kind": "stats.describe", "params": {"values": [1, 2, 3]}}


# --- start_within_s: bad input ------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b'"10"',  # a string
        b"true",
        b"[1]",
        b"-1",
        b"0",
        b"1e300",  # past JOBSTREAM_MAX_START_WITHIN_S
        b"1e999",  # overflows to infinity
        b"NaN",
        b'"\xef\xbc\x91\xef\xbc\x90"',  # fullwidth digits
        b'"\xe2\x88\x9e"',  # the infinity sign
    ],
)
def test_a_bad_start_within_s_is_a_422_naming_the_field(client: httpx.Client, raw: bytes) -> None:
    body = b'{"kind": "stats.describe", "params": {"values": [1]}, "start_within_s": ' + raw + b"}"
    response = client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    if response.status_code == 422:
        assert [e["field"] for e in response.json()["errors"]] == ["start_within_s"], response.text


def test_a_bad_start_within_s_in_a_batch_names_the_item(client: httpx.Client) -> None:
    jobs = [{**JOB, "start_within_s": 5}, {**JOB, "start_within_s": -3}, {**JOB, "start_within_s": 10**9}]
    response = client.post("/v1/jobs:batch", json={"jobs": jobs})
    assert response.status_code == 202, response.text
    items = response.json()["jobs"]
    assert items[0]["error"] is None
    assert [e["field"] for e in items[1]["error"]["errors"]] == ["jobs.1.start_within_s"]
    assert [e["field"] for e in items[2]["error"]["errors"]] == ["jobs.2.start_within_s"]


def test_start_within_s_rides_the_request_and_old_records_decode_without_it() -> None:
    request = JobRequested(job_id="j", tenant="t", kind="k", params={}, start_within_s=2.5)
    assert decode_request(dumps(request)).start_within_s == 2.5
    old = orjson.loads(dumps(request))
    del old["start_within_s"]  # a record written before the field existed
    assert decode_request(orjson.dumps(old)).start_within_s is None


# --- queue positions ------------------------------------------------------------------------------
def test_positions_count_the_jobs_still_waiting_ahead_whatever_order_they_leave_in(settings: Settings) -> None:
    backlog = TenantBacklog(KafkaConnection.from_settings(settings), settings.topic(topics.EVENTS), 3600)
    try:
        backlog.hold("a", ["j0", "j1", "j2"])
        backlog.hold("b", ["j3", "j4"])
        assert [backlog.place(j).ahead for j in ("j0", "j2", "j4")] == [0, 2, 4]  # type: ignore[union-attr]
        backlog.release(["j2"])  # out of order (a priority, another partition)
        assert backlog.place("j4").ahead == 3 and backlog.place("j2") is None  # type: ignore[union-attr]
        backlog.release(["j0", "j1"])  # from the front: j2's leftover mark goes with them
        assert backlog.place("j3").ahead == 0 and backlog.place("j4").ahead == 1  # type: ignore[union-attr]
        assert (backlog.waiting("a"), backlog.waiting("b")) == (0, 2)
        assert backlog.place("j4").eta_s is None  # type: ignore[union-attr]  # no start measured
    finally:
        backlog.stop()


class _Record:
    """What the backlog reads of a Kafka message."""

    def __init__(self, value: bytes, key: bytes | None = None) -> None:
        self._value, self._key = value, key

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000))


def _event(job_id: str, tenant: str, type_: EventType, data: dict | None = None) -> _Record:
    return _Record(encode_event(job_id, tenant, 0, type_, "stats.describe", data or {}, utcnow()), job_id.encode())


def test_the_backlog_counts_waiting_jobs_from_peeked_and_parsed_events_alike(settings: Settings) -> None:
    """Most events are read from their first bytes (``wire.peek``), a running one and any event
    not in the canonical form are parsed: the counts must not depend on which."""
    backlog = TenantBacklog(KafkaConnection.from_settings(settings), settings.topic(topics.EVENTS), 3600)
    try:
        backlog.hold("a", ["held"])  # submitted through this process: its queued event is a repeat
        not_canonical = b'{"job_id": "j4", "tenant": "c", "seq": 0, "type": "queued", "kind": "k", "ts": "%s"}' % (
            utcnow().isoformat().encode()
        )
        backlog.handle(
            [
                _event("held", "a", EventType.QUEUED),
                _event("j1", "a", EventType.QUEUED, {"params": {"type": "succeeded"}}),
                _event("j2", "a", EventType.QUEUED),
                _event("j3", "b", EventType.QUEUED),
                _Record(not_canonical),
                _event("j1", "a", EventType.PROGRESS, {"progress": 0.5}),  # not a start: j1 still waits
                _event("j2", "a", EventType.RUNNING, {"attempt": 1}),
                _event("j2", "a", EventType.SUCCEEDED),
                _event("j3", "b", EventType.CANCELLED),  # cancelled while waiting
                _event("gone", "a", EventType.SUCCEEDED),  # never seen waiting: nothing to remove
                _Record(b"not an event"),
            ]  # type: ignore[list-item]
        )
        assert backlog.waiting_by_tenant() == {"a": 2, "c": 1}
        assert [backlog.place(j).ahead for j in ("held", "j1", "j4")] == [0, 1, 2]  # type: ignore[union-attr]
        assert backlog.place("j2") is None and backlog.place("j3") is None
    finally:
        backlog.stop()


# --- the rate limit (per API process) -------------------------------------------------------------
def test_the_rate_limit_refuses_past_the_burst_and_refills_at_the_rate() -> None:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:1",
        tenant_overrides={"slow": {"rate_per_s": 2, "rate_burst": 3}},
    )
    admission = Admission(AdmissionConfig.from_settings(settings), backlog=None)
    for _ in range(3):
        admission.check("slow")
    with pytest.raises(Exception) as refused:
        admission.check("slow")
    problem: Any = refused.value
    assert problem.status == 429 and problem.extensions["reason"] == "rate"
    assert problem.headers["Retry-After"] == "1"
    for _ in range(100):
        admission.check("fast")  # no rate for other tenants
    assert admission.throttled == {"slow": {"queue": 0, "rate": 1}}
    wait_until(lambda: _admits(admission, "slow"), 5, message="a token after 1/rate s")


def _admits(admission: Admission, tenant: str) -> bool:
    try:
        admission.check(tenant)
    except Exception:
        return False
    return True


# --- the per-tenant cap, against the broker ---------------------------------------------------------
def test_the_per_tenant_429_hits_only_the_flooding_tenant(settings: Settings, store: ClickHouseStore) -> None:
    """No worker runs: A's jobs wait. Past A's cap A gets 429 with Retry-After, B is accepted and sees
    A's jobs ahead of its own; a second API process counts the same; once a worker drains A, A is
    admitted again."""
    scoped = isolated(settings, tenant_max_queued_jobs=4, metrics=True)
    api_keys, t = keys("a", "b")
    a, b = bearer(t["a:key"]), bearer(t["b:key"])
    with (
        gateway(scoped, store, frozenset({"api"}), api_keys=api_keys) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        flood = [client.post("/v1/jobs", json=JOB, headers=a) for _ in range(4)]
        assert [r.status_code for r in flood] == [202] * 4
        refused = client.post("/v1/jobs", json=JOB, headers=a)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["reason"] == "queue" and refused.json()["queued_jobs"] == 4
        batch = client.post("/v1/jobs:batch", json={"jobs": [JOB]}, headers=a)
        assert batch.status_code == 429

        other = client.post("/v1/jobs", json=JOB, headers=b)
        assert other.status_code == 202, other.text
        # B's job stands behind A's four (the tail has seen their queued events by now, or the hold did)
        status = client.get(other.headers["Location"], headers=b).json()
        assert status["status"] == "queued" and status["queue_position"] == 4, status
        assert status["start_eta_s"] is None  # nothing started yet: no rate to extrapolate from

        stats = client.get("/v1/stats", headers=a).json()["admission"]
        assert stats["waiting"] == 4 and stats["throttled"] == {"queue": 2, "rate": 0}
        assert client.get("/v1/stats", headers=b).json()["admission"]["throttled"] == {"queue": 0, "rate": 0}
        throttled = re.search(
            r'^jobstream_submissions_throttled_total\{reason="queue"\} (\S+)$', client.get("/metrics").text, re.M
        )
        assert throttled is not None and float(throttled.group(1)) >= 2

        # another API process (or this one restarted) counts A's waiting jobs from jobs.events
        with gateway(scoped, store, frozenset({"api"}), api_keys=api_keys) as second:
            again = httpx.post(f"{second.url}/v1/jobs", json=JOB, headers=a, timeout=30)
            assert again.status_code == 429, again.text

        worker = Worker(scoped, log=Path(scoped.data_dir) / "worker.log").start()
        try:
            wait_until(
                lambda: client.post("/v1/jobs", json=JOB, headers=a).status_code == 202,
                90,
                message=f"A admitted once its jobs started: {worker.tail()}",
            )
            wait_until(lambda: app_state(api).admission.backlog.tenant_rate(t["a"]) > 0, 30, message="A's rate")
        finally:
            worker.stop()


def test_retry_after_follows_the_tenants_own_start_rate(settings: Settings, store: ClickHouseStore) -> None:
    scoped = isolated(settings, tenant_max_queued_jobs=3, retry_after_s=7)
    api_keys, t = keys("a")
    a = bearer(t["a:key"])
    with (
        gateway(scoped, store, frozenset({"api"}), api_keys=api_keys) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        assert all(client.post("/v1/jobs", json=JOB, headers=a).status_code == 202 for _ in range(3))
        refused = client.post("/v1/jobs", json=JOB, headers=a)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "7"  # no rate yet: the default
        backlog = app_state(api).admission.backlog
        with backlog._lock:  # as if A's jobs had been starting at 0.5/s: one job over → 2 s
            backlog._rates[t["a"]] = 0.5
        assert client.post("/v1/jobs", json=JOB, headers=a).headers["Retry-After"] == "2"


# --- start_within_s, against the broker -----------------------------------------------------------
def test_start_within_s_expires_a_job_that_could_not_start(settings: Settings, store: ClickHouseStore) -> None:
    """One calculation process, busy for 6 s with a blocker: a job with start_within_s=1 behind it ends
    failed/expired without a running event, before the blocker is done (the worker's timer)."""
    scoped = isolated(settings, calc_processes=1, batch_max_size=1, expiry_check_s=0.2)
    worker = Worker(scoped, log=Path(scoped.data_dir) / "worker.log").start()
    try:
        with (
            gateway(scoped, store, frozenset({"api", "sink"})) as api,
            httpx.Client(base_url=api.url, timeout=30) as client,
        ):
            blocker = client.post(
                "/v1/jobs", json={"kind": "test.work", "params": {"sleep_s": 6, "group": "blocker"}}
            ).json()["job_id"]
            wait_until(
                lambda: client.get(f"/v1/jobs/{blocker}").json()["status"] == "running",
                60,
                message=f"blocker running: {worker.tail()}",
            )
            late = client.post(
                "/v1/jobs",
                json={"kind": "test.work", "params": {"group": "late"}, "start_within_s": 1},
            )
            assert late.status_code == 202, late.text
            job_id = late.json()["job_id"]
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "failed", 30, message="expired")
            view = client.get(f"/v1/jobs/{job_id}").json()
            assert view["error"]["type"] == "expired", view
            assert view["started_at"] is None, view
            assert client.get(f"/v1/jobs/{blocker}").json()["status"] == "running"  # it expired while held
            wait_until(lambda: _error_type(store, job_id) == "expired", 30, message="the outcome row in ClickHouse")
            stats = client.get("/v1/stats").json()
            assert stats["expired"] >= 1 and stats["failed"] >= stats["expired"]
            types = [r[0] for r in store.query("SELECT type FROM job_events WHERE job_id = {j:String}", {"j": job_id})]
            assert "running" not in types and "failed" in types
    finally:
        worker.stop()


def _error_type(store: ClickHouseStore, job_id: str) -> str | None:
    rows = store.query("SELECT error_type FROM job_outcomes WHERE job_id = {j:String}", {"j": job_id})
    return rows[0][0] if rows else None


def test_a_job_within_its_deadline_runs(client: httpx.Client) -> None:
    job_id = client.post("/v1/jobs", json={**JOB, "start_within_s": 600}).json()["job_id"]
    wait_until(
        lambda: client.get(f"/v1/jobs/{job_id}", params={"wait": "5"}).json()["status"] == "succeeded",
        60,
        message="the job ran",
    )
