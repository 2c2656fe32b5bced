"""Single flight of reuse when Kafka is slow to acknowledge (its JVM paused with SIGSTOP): the request
that submits the job for a reuse key times out (503 'outcome unknown') while its records may still
land; identical requests must not start a second job meanwhile, and a batch that submits a key holds
its flight like a single submit does. Counted on ``jobs.requested`` and by the calculation itself.

The session broker is shared by every test, so this module starts and pauses its own."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobstream.server import create_app
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.local_kafka import LocalKafka
from streams.settings import Settings
from tests.support.kafka import record_count
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

pytestmark = pytest.mark.kafka

TIMEOUT_S = 4.0  # JOBSTREAM_PRODUCE_TIMEOUT_S: the owner's wait for the ack
HERD = 8


@pytest.fixture(scope="module")
def paused_stack(
    tmp_path_factory: pytest.TempPathFactory, settings: Settings, store: ClickHouseStore
) -> Iterator[tuple[LocalKafka, Settings, Server]]:
    broker = LocalKafka(tmp_path_factory.mktemp("kafka")).start()
    local = isolated(settings, kafka_bootstrap=broker.bootstrap, produce_timeout_s=TIMEOUT_S, reuse_max_age_s=3600)
    worker = Worker(local).start()
    server = Server(create_app(local, store=store)).start()
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 120, message="API on own broker")
        yield broker, local, server
    finally:
        server.stop()
        worker.stop()
        broker.stop()


class _Paused:
    """SIGSTOP the broker's JVM; ``resume`` (or leaving the block) sends SIGCONT."""

    def __init__(self, broker: LocalKafka) -> None:
        assert broker.pid is not None
        self.pid = broker.pid
        self.paused = False

    def __enter__(self) -> _Paused:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True
        return self

    def resume(self) -> None:
        if self.paused:
            os.kill(self.pid, signal.SIGCONT)
            self.paused = False

    def __exit__(self, *exc: object) -> None:
        self.resume()


def _job(counter: Path) -> dict[str, Any]:
    return {"kind": "test.counted", "params": {"x": 3, "counter": str(counter)}, "reuse": {"max_age_s": 600}}


def _calcs(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def _requests(local: Settings) -> int:
    return record_count(local.kafka_bootstrap or "", local.topic(topics.REQUESTED))


def _post(url: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=120)


def _named(response: httpx.Response) -> set[str]:
    """The job ids an answer names: its job, the jobs of a batch, or those a 503 says may still land."""
    body = response.json()
    ids = {body["job_id"]} if body.get("job_id") else set()
    ids |= set(body.get("job_ids", []))
    ids |= {item["job_id"] for item in body.get("jobs", []) if item.get("job_id")}
    return ids


def _succeeded(url: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=30).json()
        return body if body.get("status") == "succeeded" else None

    return wait_until(done, 90, 0.2, message=f"job {job_id} to succeed")  # type: ignore[return-value]


def test_an_owner_whose_outcome_is_unknown_makes_the_herd_wait_for_it_not_start_another_job(
    paused_stack: tuple[LocalKafka, Settings, Server], tmp_path: Path
):
    broker, local, server = paused_stack
    counter = tmp_path / f"calcs-{uuid.uuid4().hex[:6]}"
    job = _job(counter)
    before = _requests(local)
    with _Paused(broker) as paused, ThreadPoolExecutor(HERD) as pool:
        herd: list[Future[httpx.Response]] = [pool.submit(_post, server.url, "/v1/jobs", job) for _ in range(HERD)]
        # the owner times out first: 503 'outcome unknown' with the job id its records carry
        first = wait_until(lambda: next((f for f in herd if f.done()), None), 60, 0.05, message="the owner's 503")
        owner = first.result()  # type: ignore[union-attr]
        assert owner.status_code == 503 and owner.json()["outcome"] == "unknown", owner.text
        job_id = owner.json()["job_id"]
        paused.resume()  # the owner's records land now; the others are still waiting
        answers = [f.result() for f in herd]
    for answer in answers:
        assert answer.status_code in (200, 202, 503), answer.text
        if answer.status_code == 503:
            assert answer.json()["outcome"] == "unknown", answer.text
        assert _named(answer) == {job_id}, answer.text
    # once the broker is back, identical requests join (or hit) that same job
    later = [_post(server.url, "/v1/jobs", job) for _ in range(3)]
    assert {a.status_code for a in later} <= {200, 202} and {a.json()["job_id"] for a in later} == {job_id}
    assert _succeeded(server.url, job_id)["result"] == {"y": 9.0}
    assert _requests(local) == before + 1
    assert _calcs(counter) == 1


def test_a_batch_holds_the_flight_of_its_reuse_keys_like_a_single_submit(
    paused_stack: tuple[LocalKafka, Settings, Server], tmp_path: Path
):
    broker, local, server = paused_stack
    counter = tmp_path / f"calcs-{uuid.uuid4().hex[:6]}"
    job = _job(counter)
    before = _requests(local)
    submits = server.server.config.app.state.submits
    with _Paused(broker) as paused, ThreadPoolExecutor(2) as pool:
        batch = pool.submit(_post, server.url, "/v1/jobs:batch", {"jobs": [job]})
        wait_until(lambda: submits.in_flight >= 1, 30, 0.02, message="the batch waiting for Kafka")
        single = pool.submit(_post, server.url, "/v1/jobs", job)
        wait_until(lambda: submits.in_flight >= 2, 30, 0.02, message="the single submit in flight")
        paused.resume()
        answers = [batch.result(), single.result()]
    named = set().union(*(_named(a) for a in answers))
    assert len(named) == 1, [a.text for a in answers]
    (job_id,) = named
    assert answers[0].status_code == 202 and answers[0].json()["jobs"][0]["job_id"] == job_id, answers[0].text
    assert answers[1].status_code in (200, 202) and answers[1].json()["reused_from"] == job_id, answers[1].text
    _succeeded(server.url, job_id)
    assert _requests(local) == before + 1
    assert _calcs(counter) == 1
