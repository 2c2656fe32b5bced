"""A real ``jobstream up`` (API, one worker, its calculation processes) scraped through the API port:
worker-side metrics arrive through multiprocess mode, and a real Prometheus server counts the jobs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Producer

from streams import topics
from streams.events import JobRequested
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import dumps
from tests.support.prometheus import PrometheusServer, samples
from tests.support.service_process import ServiceProcess, service_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

JOBS = 5
TERMINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def up(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    home = tmp_path_factory.mktemp("metrics-up")
    prefix = f"{settings.topic_prefix}m{uuid.uuid4().hex[:6]}."
    ensure_topics(KafkaConnection.from_settings(settings), settings.model_copy(update={"topic_prefix": prefix}))
    process = ServiceProcess(
        ["up", "--log-level", "warning"],
        service_env(settings.kafka_bootstrap or "", prefix, home, workers="1", calc_processes="1"),
        home / "up.log",
    ).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def finished(up: ServiceProcess) -> list[str]:
    """JOBS jobs submitted to the stack and finished (the only jobs this module submits)."""
    ids = [
        httpx.post(
            f"{up.url}/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, i]}}, timeout=30
        ).json()["job_id"]
        for i in range(JOBS)
    ]

    def all_done() -> bool:
        for job_id in ids:
            response = httpx.get(f"{up.url}/v1/jobs/{job_id}", timeout=10)
            if response.status_code != 200 or response.json()["status"] not in TERMINAL:
                return False
        return True

    wait_until(all_done, 120, 0.2, message="the jobs to finish")
    return ids


def scrape(up: ServiceProcess) -> list[tuple[str, str, float]]:
    response = httpx.get(f"{up.url}/metrics", timeout=10)
    assert response.status_code == 200
    return samples(response.text)


def value(found: list[tuple[str, str, float]], name: str, *labels: str) -> float:
    return sum(v for n, ls, v in found if n == name and all(label in ls for label in labels))


def test_one_scrape_of_the_api_port_covers_the_worker_and_its_calculation_processes(
    up: ServiceProcess, finished: list[str]
):
    """jobs_finished is counted in the worker process, batch_run/batch_size in the calculation process:
    neither runs in the API process that answers the scrape."""
    # Both write tallied values (at most metrics.FLUSH_S late): wait for the one and the other.
    wait_until(
        lambda: (
            value(found := scrape(up), "jobstream_jobs_finished_total", 'status="succeeded"') == JOBS
            and value(found, "jobstream_batch_size_sum", 'kind="stats.describe"') == JOBS
        ),
        30,
        0.2,
        message=f"{JOBS} finished jobs, and batches of {JOBS} jobs, in /metrics",
    )
    found = scrape(up)
    assert value(found, "jobstream_jobs_finished_total", 'kind="stats.describe"', 'status="succeeded"') == JOBS
    assert value(found, "jobstream_job_latency_seconds_count", 'kind="stats.describe"') == JOBS
    assert value(found, "jobstream_job_queue_wait_seconds_count", 'kind="stats.describe"') == JOBS
    assert value(found, "jobstream_batch_size_sum", 'kind="stats.describe"') == JOBS  # calculation process
    assert value(found, "jobstream_batch_run_seconds_count", 'kind="stats.describe"') >= 1
    assert value(found, "jobstream_submissions_accepted_total", 'route="/v1/jobs"') == JOBS  # API process
    assert value(found, "jobstream_sink_rows_inserted_total") >= JOBS  # sink, in the API process
    files = list((Path(up.env["JOBSTREAM_DATA_DIR"]) / "metrics").glob("*.db"))
    pids = {path.stem.rsplit("_", 1)[1] for path in files}
    assert len(pids) >= 3, sorted(p.name for p in files)  # API, worker, calculation process


def test_no_tenant_label_by_default(up: ServiceProcess, finished: list[str]):
    found = scrape(up)
    assert found
    assert not [(n, ls) for n, ls, _ in found if "tenant=" in ls]
    assert not [n for n, _, _ in found if n.startswith("jobstream_tenant_")]
    assert not [(n, ls) for n, ls, _ in found if any(job_id in ls for job_id in finished)]


def test_a_real_prometheus_scrapes_up_and_counts_the_finished_jobs(
    up: ServiceProcess, finished: list[str], tmp_path: Path
):
    prometheus = PrometheusServer(tmp_path, [up.url.removeprefix("http://")]).start()
    try:

        def finished_jobs() -> float | None:
            result = prometheus.query('sum(jobstream_jobs_finished_total{status="succeeded"})')
            return float(result[0]["value"][1]) if result else None

        wait_until(lambda: finished_jobs() is not None, 60, 0.5, message="prometheus to scrape jobstream")
        assert finished_jobs() == JOBS
        up_series = prometheus.query('up{job="jobstream"}')
        assert [float(s["value"][1]) for s in up_series] == [1.0]
        waiting = prometheus.query("max(jobstream_processor_oldest_waiting_seconds)")
        assert waiting and float(waiting[0]["value"][1]) == 0.0  # nothing waits: every job finished
    finally:
        prometheus.stop()


def test_a_worker_on_its_own_serves_its_metrics_and_its_calculation_processes(settings: Settings):
    """The distributed layout: `jobstream worker` with JOBSTREAM_WORKER_METRICS_PORT, no HTTP process."""
    from streams.local_kafka import free_port
    from tests.support.workers import Worker, isolated

    port = free_port()
    scoped = isolated(settings, worker_metrics_port=port, calc_processes=1)
    worker = Worker(scoped).start()
    try:
        ids = [uuid.uuid4().hex for _ in range(3)]
        producer = Producer(KafkaConnection.from_settings(scoped).producer_config())
        for i, job_id in enumerate(ids):
            request = JobRequested(job_id=job_id, kind="stats.describe", params={"values": [1, 2, i]})
            producer.produce(scoped.topic(topics.REQUESTED), key=job_id.encode(), value=dumps(request))
        assert producer.flush(30) == 0
        url = f"http://127.0.0.1:{port}/metrics"

        def finished_here() -> bool:
            assert worker.process is not None and worker.process.poll() is None, worker.tail()
            try:
                found = samples(httpx.get(url, timeout=5).text)
            except httpx.TransportError:
                return False
            return (  # the worker's and its calculation process's tallies (each flushed on its own)
                value(found, "jobstream_jobs_finished_total", 'status="succeeded"') == len(ids)
                and value(found, "jobstream_batch_size_sum", 'kind="stats.describe"') == len(ids)
            )

        wait_until(finished_here, 120, 0.2, message="the worker's /metrics to count the jobs and their batches")
        found = samples(httpx.get(url, timeout=5).text)
        assert value(found, "jobstream_batch_size_sum", 'kind="stats.describe"') == len(ids)  # calculation process
    finally:
        worker.stop()
