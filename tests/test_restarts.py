"""Restarts after kill -9: nothing is left behind, and a restarted HTTP process answers fresh at once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support.service_process import ServiceProcess, alive, descendants, service_env
from tests.support.waiting import wait_until
from tests.support.workers import PLUGIN, Worker, isolated

pytestmark = pytest.mark.kafka

TERMINAL = {"succeeded", "failed", "cancelled"}


def status(base: str, job_id: str) -> str:
    """The job's status, or the HTTP status when there is none (a 404 until the store has the job)."""
    response = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10)
    return response.json()["status"] if response.status_code == 200 else f"HTTP {response.status_code}"


def test_a_worker_whose_up_was_killed_exits_within_5s_with_its_calculation_processes(
    settings: Settings, tmp_path: Path
):
    """kill -9 of `jobstream up` while a job runs: every process it started is gone within 5 s."""
    prefix = f"{settings.topic_prefix}up{uuid.uuid4().hex[:6]}."
    ensure_topics(KafkaConnection.from_settings(settings), settings.model_copy(update={"topic_prefix": prefix}))
    up = ServiceProcess(
        ["up", "--log-level", "warning"],
        service_env(settings.kafka_bootstrap or "", prefix, tmp_path, workers="1", calc_processes="2", plugins=PLUGIN),
        tmp_path / "up.log",
    ).start()
    children: set[int] = set()
    try:
        job = httpx.post(
            f"{up.url}/v1/jobs", json={"kind": "test.work", "params": {"sleep_s": 120, "steps": 120}}, timeout=30
        ).json()["job_id"]
        wait_until(lambda: status(up.url, job) == "running", 60, message="the job to run")
        children = descendants(up.pid)
        assert len(children) >= 3, children  # the worker and its two calculation processes at least
        up.kill9()
        killed_at = time.monotonic()
        wait_until(
            lambda: not any(alive(p) for p in children),
            5,
            0.05,
            message=f"{[p for p in children if alive(p)]} (children of the killed `jobstream up`) to exit",
        )
        assert time.monotonic() - killed_at < 5
    finally:
        up.stop()
        for pid in children:  # never leave a straggler to the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def scoped(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture
def worker(scoped: Settings) -> Iterator[Worker]:
    worker = Worker(scoped).start()
    yield worker
    worker.stop()


def test_a_restarted_http_process_reports_a_finished_job_within_seconds(
    scoped: Settings, worker: Worker, tmp_path: Path
):
    """kill -9 of the HTTP process while a job runs; the restarted one's sink resumes at once, so
    GET /v1/jobs/{id} says the job finished a few seconds after it did, not when the dead sink's session expires."""
    serve = ServiceProcess(
        ["serve", "--log-level", "warning"],
        service_env(scoped.kafka_bootstrap or "", scoped.topic_prefix, tmp_path, plugins=PLUGIN),
        tmp_path / "serve.log",
    ).start()
    try:
        job = httpx.post(
            f"{serve.url}/v1/jobs", json={"kind": "test.work", "params": {"sleep_s": 6, "steps": 6}}, timeout=30
        ).json()["job_id"]
        wait_until(lambda: status(serve.url, job) == "running", 60, message="the job to run")
        serve.kill9()
        serve.start()
        # The worker carried on meanwhile: the job ends about 6 s after it started.
        wait_until(
            lambda: status(serve.url, job) in TERMINAL,
            10,
            0.2,
            message=f"GET to report the job's end (stuck at {status(serve.url, job)!r})",
        )
        assert status(serve.url, job) == "succeeded"
    finally:
        serve.stop()
