"""A broker that stops answering (SIGSTOP of its JVM): the API answers every submit within about
JOBSTREAM_PRODUCE_TIMEOUT_S, past JOBSTREAM_MAX_SUBMITS_IN_FLIGHT at once, says honestly that a
timed-out job's outcome is unknown (with the job id it has), and a retry with the same
Idempotency-Key after the broker is back never makes a second request record.

The session broker is shared by every test, so this test starts and pauses its own."""

from __future__ import annotations

import os
import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from ingest_api.submit import idempotent_job_id
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

JOB = {"kind": "stats.describe", "params": {"values": [1, 2, 3]}}
TIMEOUT_S = 5.0  # long enough that every submit of the burst arrives while the first BOUND wait, even under load
BOUND = 4


def test_paused_broker_answers_in_time_honestly_and_a_keyed_retry_makes_one_job(
    tmp_path: Path, settings: Settings, store: ClickHouseStore
):
    broker = LocalKafka(tmp_path / "kafka").start()
    local = settings.model_copy(
        update={
            "kafka_bootstrap": broker.bootstrap,
            "produce_timeout_s": TIMEOUT_S,
            "max_submits_in_flight": BOUND,
            "topic_prefix": "outage.",
        }
    )
    ensure_topics(KafkaConnection.from_settings(local), local)
    server = Server(create_app(local, {"api"}, store=store)).start()
    paused = False
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="API on own broker")
        assert httpx.post(f"{server.url}/v1/jobs", json=JOB).status_code == 202

        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        paused = True

        keys = [f"outage-{uuid.uuid4()}" for _ in range(3 * BOUND)]

        def submit(key: str | None) -> tuple[str | None, httpx.Response, float]:
            started = time.monotonic()
            headers = {"Idempotency-Key": key} if key else {}
            response = httpx.post(f"{server.url}/v1/jobs", json=JOB, headers=headers, timeout=60)
            return key, response, time.monotonic() - started

        submits = server.server.config.app.state.submits
        with ThreadPoolExecutor(len(keys) + 1) as pool:
            unkeyed = pool.submit(submit, None)  # first, so that it surely gets a slot
            wait_until(lambda: submits.in_flight >= 1, 10, message="the first submit in flight")
            answers = list(pool.map(submit, keys))
            answers.append(unkeyed.result())

        unknown = [a for a in answers if a[1].json().get("outcome") == "unknown"]
        refused = [a for a in answers if a[1].json().get("outcome") == "not_accepted"]
        assert len(unknown) + len(refused) == len(answers), [a[1].text for a in answers]
        assert len(unknown) == BOUND and len(refused) == len(answers) - BOUND
        assert any(key is None for key, _, _ in unknown)
        for _key, response, elapsed in answers:
            assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
            assert int(response.headers["retry-after"]) >= 1
            assert elapsed < TIMEOUT_S + 1.5, f"answered after {elapsed:.1f}s"
        for _key, response, elapsed in refused:
            # at once: not after waiting for Kafka, which the in-flight ones do for TIMEOUT_S
            assert elapsed < TIMEOUT_S, f"past the bound but answered after {elapsed:.1f}s"
            assert "job_id" not in response.json()
        for key, response, _elapsed in unknown:
            problem = response.json()
            assert "unknown" in problem["detail"]
            if key is not None:
                assert problem["job_id"] == idempotent_job_id("default", key)
                assert "Idempotency-Key" in problem["detail"]
            else:
                assert problem["links"]["self"] == f"/v1/jobs/{problem['job_id']}"

        # A retry while the broker is still away: the same job id, still unknown, nothing new produced.
        key, first, _ = next(a for a in unknown if a[0] is not None)
        again = httpx.post(f"{server.url}/v1/jobs", json=JOB, headers={"Idempotency-Key": key}, timeout=60)
        assert again.status_code == 503 and again.json()["job_id"] == first.json()["job_id"]

        os.kill(broker.pid, signal.SIGCONT)
        paused = False

        requested = local.topic(topics.REQUESTED)
        for key, response, _ in unknown:
            if key is None:
                continue
            job_id = response.json()["job_id"]
            retried = wait_until(
                lambda: (
                    (
                        r := httpx.post(f"{server.url}/v1/jobs", json=JOB, timeout=30, headers={"Idempotency-Key": key})
                    ).status_code
                    < 500
                    and r
                ),
                60,
                message="a retry after the broker is back",
            )
            assert retried.status_code in (200, 202) and retried.json()["job_id"] == job_id
            wait_until(
                lambda: requests_for(broker.bootstrap, requested, job_id) >= 1,
                60,
                message="the keyed job's request on Kafka",
            )
            assert requests_for(broker.bootstrap, requested, job_id) == 1
        # The unkeyed job's outcome was unknown, and it is either way: its record landed if librdkafka had
        # sent it before the pause (the broker answers that request before the retries above, on the same
        # connection), or it timed out in the client's queue. Never twice.
        (unkeyed_id,) = [response.json()["job_id"] for key, response, _ in unknown if key is None]
        assert requests_for(broker.bootstrap, requested, unkeyed_id) <= 1
    finally:
        if paused and broker.pid is not None:
            os.kill(broker.pid, signal.SIGCONT)
        server.stop()
        broker.stop()
