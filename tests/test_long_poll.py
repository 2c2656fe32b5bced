"""Long-poll: ``GET /v1/jobs/{id}?wait=S`` (and ``/result``), ``Prefer: wait=S`` on GET and POST.

Most tests run an API without processors on topics of their own and finish jobs by putting their
events on ``jobs.events`` as a processor would, so when a job ends is up to the test. One runs a
real job through the shared stack.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from ingest_api.submit import idempotent_job_id
from ingest_api.waits import JobWaits, parse_prefer
from store.clickhouse import ClickHouseStore
from streams.events import JobEvent
from streams.settings import Settings
from tests.support.kafka import EventProducer
from tests.support.servers import Server
from tests.support.sse import TERMINAL_SEQ, app_state, event, gateway
from tests.support.waiting import wait_until
from tests.support.workers import isolated

pytestmark = pytest.mark.kafka

JOB = {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0]}}
RESULT = {"mean": 2.0}


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture(scope="module")
def quiet(scoped: Settings, store: ClickHouseStore) -> Iterator[Server]:
    """API + gateway on topics of their own, with no processor: jobs end when a test says so."""
    with gateway(scoped, store, roles=frozenset({"api", "gateway"})) as server:
        yield server


@pytest.fixture(scope="module")
def events_out(scoped: Settings) -> EventProducer:
    return EventProducer(scoped)


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as pool:
        yield pool


def finish(events_out: EventProducer, job_id: str, result: Any = RESULT) -> None:
    """What a processor writes for a job that runs and succeeds."""
    events_out.send(
        event(job_id, 1, "running", kind="stats.describe"),
        event(job_id, TERMINAL_SEQ, "succeeded", kind="stats.describe", result=result, calc_version="1"),
    )


def submit(base: str) -> str:
    answer = httpx.post(f"{base}/v1/jobs", json=JOB, timeout=30)
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def timed(call: Callable[[], httpx.Response]) -> Callable[[], tuple[httpx.Response, float]]:
    def run() -> tuple[httpx.Response, float]:
        started = time.monotonic()
        response = call()
        return response, time.monotonic() - started

    return run


def waiting(server: Server, count: int) -> None:
    state = app_state(server)
    wait_until(lambda: state.waits.waiting == count, 30, message=f"{count} waiting requests")


def test_a_waiting_get_answers_as_soon_as_the_job_finishes(
    quiet: Server, events_out: EventProducer, pool: ThreadPoolExecutor
):
    job = submit(quiet.url)
    url = f"{quiet.url}/v1/jobs/{job}"
    status: Future = pool.submit(timed(lambda: httpx.get(url, params={"wait": "30"}, timeout=60)))
    result: Future = pool.submit(timed(lambda: httpx.get(f"{url}/result", params={"wait": "30"}, timeout=60)))
    preferred: Future = pool.submit(timed(lambda: httpx.get(url, headers={"Prefer": "wait=30"}, timeout=60)))
    waiting(quiet, 3)
    assert not (status.done() or result.done() or preferred.done())
    finish(events_out, job)

    for future in (status, preferred):
        answer, took = future.result(60)
        assert answer.status_code == 200 and took < 25, (answer.text, took)
        body = answer.json()
        assert body["status"] == "succeeded" and body["result"] == RESULT and body["finished_at"]
        assert "retry-after" not in answer.headers
    assert preferred.result()[0].headers["preference-applied"] == "wait=30"
    assert "preference-applied" not in status.result()[0].headers
    answer, took = result.result(60)
    assert answer.status_code == 200 and answer.json()["result"] == RESULT and took < 25
    waiting(quiet, 0)

    again, took = timed(lambda: httpx.get(url, params={"wait": "30"}, timeout=60))()  # finished: at once
    assert again.json()["status"] == "succeeded" and took < 10


def test_a_waiting_get_gives_the_current_state_after_the_wait_and_the_wait_is_capped(
    scoped: Settings, store: ClickHouseStore, quiet: Server
):
    job = submit(quiet.url)
    answer, took = timed(lambda: httpx.get(f"{quiet.url}/v1/jobs/{job}", params={"wait": "1.5"}, timeout=60))()
    assert answer.status_code == 200 and answer.json()["status"] == "queued" and took >= 1.4
    assert answer.headers["retry-after"]
    pending, took = timed(lambda: httpx.get(f"{quiet.url}/v1/jobs/{job}/result", params={"wait": "0.5"}))()
    assert pending.status_code == 202 and took >= 0.4 and pending.headers["location"].endswith(job)
    unknown, took = timed(lambda: httpx.get(f"{quiet.url}/v1/jobs/{uuid.uuid4().hex}", params={"wait": "30"}))()
    assert unknown.status_code == 404 and took < 10  # nothing to wait for

    with gateway(scoped, store, roles=frozenset({"api", "gateway"}), max_wait_s=1) as capped:
        job = submit(capped.url)
        answer, took = timed(
            lambda: httpx.get(f"{capped.url}/v1/jobs/{job}", headers={"Prefer": "wait=3600"}, timeout=60)
        )()
        assert answer.status_code == 200 and answer.json()["status"] == "queued" and 0.9 <= took < 20
        assert answer.headers["preference-applied"] == "wait=1"


def test_post_with_prefer_wait_answers_200_with_the_finished_job_or_202_when_it_takes_longer(
    quiet: Server, events_out: EventProducer, pool: ThreadPoolExecutor
):
    key = uuid.uuid4().hex
    job = idempotent_job_id("default", key)
    headers = {"Prefer": "wait=30", "Idempotency-Key": key}
    post: Future = pool.submit(timed(lambda: httpx.post(f"{quiet.url}/v1/jobs", json=JOB, headers=headers, timeout=60)))
    waiting(quiet, 1)
    finish(events_out, job)
    answer, took = post.result(60)
    assert answer.status_code == 200 and took < 25, answer.text
    body = answer.json()
    assert body["job_id"] == job and body["status"] == "succeeded" and body["result"] == RESULT
    assert answer.headers["preference-applied"] == "wait=30"
    assert answer.headers["content-location"] == f"/v1/jobs/{job}"
    # the same request again: the job is long finished, so at once
    again, took = timed(lambda: httpx.post(f"{quiet.url}/v1/jobs", json=JOB, headers=headers, timeout=60))()
    assert again.status_code == 200 and again.json()["status"] == "succeeded" and took < 10

    for prefer in ("wait=1", "respond-async, wait=1", "wait=1; x=y, handling=lenient"):
        late, took = timed(lambda: httpx.post(f"{quiet.url}/v1/jobs", json=JOB, headers={"Prefer": prefer}))()
        assert late.status_code == 202 and took >= 0.9, prefer
        assert late.headers["location"] == late.json()["links"]["self"] and "preference-applied" not in late.headers
    for prefer in ("respond-async", "handling=strict", "return=minimal"):  # no wait asked: today's answer
        at_once = httpx.post(f"{quiet.url}/v1/jobs", json=JOB, headers={"Prefer": prefer})
        assert at_once.status_code == 202 and "preference-applied" not in at_once.headers, prefer
    waiting(quiet, 0)


BAD_WAITS = ["-1", "=", "abc", "1e3", "inf", "nan", "", " ", "10s", "0x10", "1.5.2", "9" * 13, "1." + "5" * 10, "+5"]


@pytest.mark.parametrize("value", [*BAD_WAITS, "１０", "٣", "5\u00a0"])
def test_a_bad_wait_parameter_is_a_400_naming_it(quiet: Server, value: str):
    job = submit(quiet.url)
    for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/result"):
        answer = httpx.get(f"{quiet.url}{path}", params={"wait": value})
        assert answer.status_code == 400, (value, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["errors"][0]["field"] == "wait"


@pytest.mark.parametrize("value", [v for v in BAD_WAITS if v.strip()])
def test_a_bad_prefer_wait_is_a_400_naming_the_header_on_get_and_post(quiet: Server, value: str):
    job = submit(quiet.url)
    for method, path, body in (("GET", f"/v1/jobs/{job}", None), ("POST", "/v1/jobs", JOB)):
        answer = httpx.request(method, f"{quiet.url}{path}", json=body, headers={"Prefer": f"wait={value}"})
        assert answer.status_code == 400, (method, value, answer.text)
        assert answer.json()["errors"][0]["field"] == "Prefer"


def test_an_api_without_a_gateway_learns_of_finished_jobs_from_its_own_tail(
    scoped: Settings, store: ClickHouseStore, events_out: EventProducer, pool: ThreadPoolExecutor
):
    with gateway(scoped, store, roles=frozenset({"api"})) as api:
        state = app_state(api)
        assert not hasattr(state, "fanout") and state.finished_tail.running
        key = uuid.uuid4().hex
        job = idempotent_job_id("default", key)
        post: Future = pool.submit(
            timed(
                lambda: httpx.post(
                    f"{api.url}/v1/jobs", json=JOB, headers={"Prefer": "wait=30", "Idempotency-Key": key}, timeout=60
                )
            )
        )
        waiting(api, 1)
        finish(events_out, job)
        answer, took = post.result(60)
        assert answer.status_code == 200 and took < 25, answer.text
        assert answer.json()["status"] == "succeeded" and answer.json()["result"] == RESULT


def test_a_real_job_submitted_with_prefer_wait_comes_back_with_its_result(client: httpx.Client):
    answer = client.post(
        "/v1/jobs",
        json={"kind": "stats.describe", "params": {"values": [float(i) for i in range(100)]}},
        headers={"Prefer": "wait=60"},
        timeout=90,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "succeeded" and body["progress"] == 1.0 and body["started_at"]
    stored = client.get(f"/v1/jobs/{body['job_id']}/result")
    assert stored.status_code == 200 and stored.json()["result"] == body["result"]


# --- the registry and the header, without a server ---------------------------------------------------
def terminal(job_id: str, tenant: str = "t") -> JobEvent:
    return event(job_id, TERMINAL_SEQ, "succeeded", tenant=tenant, result=1)


def test_waits_wake_on_the_terminal_event_remember_it_and_stay_bounded():
    async def scenario() -> None:
        waits = JobWaits(max_waits=2, memory_jobs=2)
        with waits.expect("t", "a") as ticket, waits.expect("t", "a") as twin:
            assert ticket is not None and twin is not None and waits.waiting == 2
            with waits.expect("t", "b") as refused:
                assert refused is None  # past max_waits: answer at once
            waits.observe(event("a", 1, "running", tenant="t"))  # not the end
            assert await ticket.wait(0.05) is None
            waits.observe(terminal("a", tenant="other"))  # another tenant's job of that id
            assert await ticket.wait(0.05) is None
            asyncio.get_running_loop().call_later(0.05, waits.observe, terminal("a"))
            got = await ticket.wait(5)
            assert got is not None and got.job_id == "a" and await twin.wait(0) is got
        assert waits.waiting == 0 and not waits._waiters
        with waits.expect("t", "a") as late:  # finished before the request came: at once
            assert late is not None and await late.wait(0) is not None
        waits.observe(terminal("b"))
        waits.observe(terminal("c"))
        assert waits.finished("t", "a") is None and waits.finished("t", "c") is not None  # bounded memory

    asyncio.run(scenario())


def test_prefer_header_parsing_follows_rfc_7240():
    assert parse_prefer(["wait=10"], 60).wait_s == 10
    assert parse_prefer(['respond-async, WAIT="2.5"'], 60) == parse_prefer(["respond-async", "wait=2.5"], 60)
    assert parse_prefer(["respond-async, wait=2.5"], 60).respond_async
    assert parse_prefer(["wait=5, wait=7"], 60).wait_s == 5  # the first one counts
    assert parse_prefer(["wait=600"], 60).wait_s == 60  # capped
    assert parse_prefer(["return=minimal; foo=bar", "handling=lenient"], 60).wait_s is None
    assert parse_prefer([""], 60).wait_s is None
