"""The metrics' contract without a stack: rules that promtool accepts, dashboard and rule queries that
name only metrics the code exports, a README entry per family, bounded labels, the multiprocess files."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from processors import runner
from processors.runner import Job
from streams.events import EventType, JobRequested, new_job_id
from telemetry import metrics, multiprocess
from tests.support import ROOT
from tests.support.prometheus import (
    ALERT_TESTS,
    ALERTS,
    binary,
    dashboard_expressions,
    exported_sample_names,
    names_in,
    rule_expressions,
    samples,
)


def test_alert_rules_pass_promtool():
    checked = subprocess.run([binary("promtool"), "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout


def test_alerts_fire_on_the_series_they_watch():
    """promtool's rule unit tests (docker/prometheus/alerts.test.yml) feed series and expect the alerts."""
    tested = subprocess.run([binary("promtool"), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


@pytest.mark.parametrize("source", ["alert rules", "dashboard"])
def test_every_metric_a_query_names_is_exported_by_the_code(source: str):
    expressions = rule_expressions() if source == "alert rules" else dashboard_expressions()
    exported = exported_sample_names()
    used = set().union(*(names_in(expr) for expr in expressions))
    assert len(used) >= 10, used
    unknown = used - set(exported)
    assert not unknown, f"the {source} query metrics the code does not export: {sorted(unknown)}"


def test_a_renamed_metric_would_fail_the_check():
    """The check above reads names from the code, not from a list: a name the code lacks is reported."""
    exported = exported_sample_names()
    assert "jobstream_jobs_finished_total" in exported
    assert "jobstream_job_finished_total" not in exported
    assert names_in('rate(jobstream_job_finished_total{status="failed"}[5m])') - set(exported)


def test_the_dashboard_and_rules_cover_the_families_operators_alert_on():
    used = set().union(*(names_in(e) for e in rule_expressions() + dashboard_expressions()))
    families = {exported_sample_names()[name] for name in used}
    for family in (
        "jobstream_processor_lag_jobs",
        "jobstream_processor_oldest_waiting_seconds",
        "jobstream_jobs_finished_total",
        "jobstream_dead_letters_total",
        "jobstream_sink_lag_seconds",
        "jobstream_sink_insert_failures_total",
        "jobstream_sse_slow_clients_dropped_total",
        "jobstream_calc_process_crashes_total",
    ):
        assert family in families, family


def test_the_readme_lists_every_family_and_no_other():
    section = (ROOT / "README.md").read_text().split("## Metrics", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `jobstream_")}
    assert listed == set(exported_sample_names().values())


def test_tenant_labels_are_bounded():
    labels = metrics.TenantLabels(enabled=True, limit=2)
    assert [labels.label(t) for t in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]


def test_per_tenant_counts_only_when_turned_on():
    tenant = f"t{uuid.uuid4().hex[:8]}"
    family = metrics.TENANT_SUBMISSIONS_ACCEPTED
    try:
        metrics.configure(False, 100)
        metrics.accepted("/v1/jobs", "stats.describe", tenant)
        assert not any(s.labels.get("tenant") == tenant for m in family.collect() for s in m.samples)
        metrics.configure(True, 100)
        metrics.accepted("/v1/jobs", "stats.describe", tenant, 3)
        counts = [s.value for m in family.collect() for s in m.samples if s.labels.get("tenant") == tenant]
        assert counts[0] == 3, counts
    finally:
        metrics.configure(False, 100)


def test_a_process_no_scrape_can_read_records_no_job_metrics(monkeypatch: pytest.MonkeyPatch):
    """No port and no multiprocess directory (a worker), or JOBSTREAM_METRICS=false (the API): nothing
    could read the values, so the per-job helpers skip them."""
    monkeypatch.delenv(multiprocess.ENV, raising=False)
    assert not metrics.readable_here(0)
    assert metrics.readable_here(9464)
    monkeypatch.setenv(multiprocess.ENV, "/nonexistent")
    assert metrics.readable_here(0)

    kind = "stats.describe"
    request = JobRequested(job_id=new_job_id(), kind=kind, params={"values": [1, 2]})
    job = Job(request, b"", [], None, [], time.monotonic())

    def finished() -> float:
        return sum(
            s.value
            for m in metrics.JOBS_FINISHED.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels == {"kind": kind, "status": "succeeded"}
        )

    def accepted() -> float:
        return sum(
            s.value
            for m in metrics.SUBMISSIONS_ACCEPTED.collect()
            for s in m.samples
            if s.name.endswith("_total") and s.labels == {"route": "/v1/jobs", "kind": kind}
        )

    try:
        before, submitted = finished(), accepted()
        metrics.configure(False, 100, recording=False)
        runner._count_finish(job, EventType.SUCCEEDED, {})
        metrics.accepted("/v1/jobs", kind, "default")
        assert (finished(), accepted()) == (before, submitted)
        metrics.configure(False, 100)
        runner._count_finish(job, EventType.SUCCEEDED, {})
        metrics.flush()  # the worker's per-job values are tallied, written once a second
        assert finished() == before + 1
    finally:
        metrics.configure(False, 100)


def test_kind_labels_are_registered_kinds_only():
    assert metrics.kind_label("stats.describe") == "stats.describe"
    assert metrics.kind_label("../" + "x" * 300) == metrics.OTHER
    assert metrics.kind_label("ünïcode\u202e") == metrics.OTHER


def test_dead_processes_lose_their_live_gauges_but_not_their_counts(tmp_path: Path):
    gone = _exited_pid()
    (tmp_path / f"gauge_livesum_{gone}.db").write_bytes(b"")
    (tmp_path / f"counter_{gone}.db").write_bytes(b"")
    (tmp_path / f"gauge_livesum_{os.getpid()}.db").write_bytes(b"")
    assert multiprocess.reap_dead(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"counter_{gone}.db", f"gauge_livesum_{os.getpid()}.db"]
    )


def test_multiprocess_mode_cannot_be_chosen_after_the_library_was_imported(tmp_path: Path):
    """prometheus_client is imported in this process already: switching now would lose metrics silently."""
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.use_directory(tmp_path / "metrics")
    assert multiprocess.ENV not in os.environ


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --- GET /metrics of the in-process stack --------------------------------------------------------
@pytest.mark.kafka
def test_metrics_endpoint_answers_prometheus_text_with_route_templates(client: httpx.Client):
    client.get(f"/v1/jobs/{uuid.uuid4().hex}")  # 404: counted under the template, not the id
    client.get(f"/no/such/{uuid.uuid4().hex}")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    routes = {
        labels for name, labels, _ in samples(response.text) if name == "jobstream_http_request_duration_seconds_count"
    }
    assert any('route="/v1/jobs/{job_id}"' in labels and 'status="404"' in labels for labels in routes), routes
    assert any('route="unmatched"' in labels for labels in routes), routes
    assert not any("/no/such" in labels for labels in routes)


@pytest.mark.kafka
@pytest.mark.parametrize("query", ["?x=1", "?name[]=jobstream_jobs_finished_total", "?%ff=%00", "?" + "a" * 5000])
def test_metrics_ignores_query_parameters(client: httpx.Client, query: str):
    response = client.get("/metrics" + query)
    assert response.status_code == 200
    assert "jobstream_http_request_duration_seconds_count" in response.text


@pytest.mark.kafka
def test_metrics_rejects_other_methods_as_problems(client: httpx.Client):
    response = client.post("/metrics", content=b"{}")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.kafka
def test_sse_streams_report_events_resumes_and_open_streams(client: httpx.Client):
    from httpx_sse import connect_sse

    def stream(url: str, **headers: str) -> list:
        with connect_sse(client, "GET", url, headers=headers, timeout=httpx.Timeout(60, read=60)) as source:
            return list(source.iter_sse())

    def value(name: str, labels: str) -> float:
        found = samples(client.get("/metrics").text)
        return sum(v for n, ls, v in found if n == name and labels in ls)

    before = {
        "events": value("jobstream_sse_events_delivered_total", 'endpoint="job"'),
        "resumes": value("jobstream_sse_resumes_total", 'endpoint="job"'),
        "open": value("jobstream_sse_open_streams", 'endpoint="job"'),
    }
    job_id = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, 3]}}).json()["job_id"]
    first = stream(f"/v1/jobs/{job_id}/events")  # ends after the terminal event
    assert first[-1].event == "succeeded"
    resumed = stream(f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": first[1].id})
    assert value("jobstream_sse_events_delivered_total", 'endpoint="job"') - before["events"] == len(first) + len(
        resumed
    )
    assert value("jobstream_sse_resumes_total", 'endpoint="job"') - before["resumes"] == 1
    assert value("jobstream_sse_open_streams", 'endpoint="job"') == before["open"]


@pytest.mark.kafka
def test_lag_and_the_oldest_waiting_jobs_age_are_measured_per_partition(settings):
    """No worker reads these topics: two requests wait, and their age grows."""
    from confluent_kafka import Producer

    from ingest_api.backpressure import LagConfig, LagMonitor
    from streams import topics
    from streams.events import JobRequested
    from streams.kafka_config import KafkaConnection
    from streams.topics import ensure_topics
    from streams.wire import dumps
    from tests.support.waiting import wait_until

    scoped = settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}lag{uuid.uuid4().hex[:6]}."})
    kafka = KafkaConnection.from_settings(scoped)
    ensure_topics(kafka, scoped)
    producer = Producer(kafka.producer_config())
    for job_id in ("a" * 32, "b" * 32):
        request = JobRequested(job_id=job_id, kind="stats.describe", params={"values": [1]})
        producer.produce(scoped.topic(topics.REQUESTED), key=job_id.encode(), value=dumps(request), partition=1)
    assert producer.flush(30) == 0
    group = scoped.topic(topics.PROCESSORS_GROUP)

    def gauge(family, partition: str) -> float:
        return family.labels(group, partition)._value.get()

    monitor = LagMonitor(kafka, LagConfig.from_settings(scoped))
    try:
        first = wait_until(
            lambda: monitor.measure() and gauge(metrics.OLDEST_WAITING, "1"), 30, message="an age for partition 1"
        )
        assert gauge(metrics.PROCESSOR_LAG, "1") == 2
        assert gauge(metrics.PROCESSOR_LAG, "0") == 0 and gauge(metrics.OLDEST_WAITING, "0") == 0
        assert 0 < first < 60
        wait_until(lambda: monitor.measure() and gauge(metrics.OLDEST_WAITING, "1") > first + 0.5, 30)
    finally:
        monitor.stop()


def test_a_tally_writes_what_the_same_observations_would_have():
    """The worker's per-job values go through metrics.Tally; its flush must equal observing each value
    (this pins the prometheus_client internals it writes to)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from telemetry.metrics import Tally

    registry = CollectorRegistry()
    direct = Histogram("direct_seconds", "d", ["kind"], buckets=(0.01, 0.1, 1.0), registry=registry)
    tallied = Histogram("tallied_seconds", "t", ["kind"], buckets=(0.01, 0.1, 1.0), registry=registry)
    count_direct = Counter("direct_jobs", "d", registry=registry)
    count_tallied = Counter("tallied_jobs", "t", registry=registry)
    values = [0.0, 0.01, 0.010001, 0.05, 0.1, 0.5, 1.0, 7.0, 0.003]
    tally = Tally()
    for value in values:
        direct.labels("k").observe(value)
        count_direct.inc()
        tally.observe(tallied.labels("k"), value)
        tally.inc(count_tallied)
    assert registry.get_sample_value("tallied_seconds_count", {"kind": "k"}) == 0  # nothing before the flush
    tally.flush()
    for le in ("0.01", "0.1", "1.0", "+Inf"):
        labels = {"kind": "k", "le": le}
        assert registry.get_sample_value("tallied_seconds_bucket", labels) == registry.get_sample_value(
            "direct_seconds_bucket", labels
        ), le
    assert registry.get_sample_value("tallied_seconds_sum", {"kind": "k"}) == pytest.approx(sum(values))
    assert registry.get_sample_value("tallied_jobs_total") == registry.get_sample_value("direct_jobs_total") == 9
    tally.flush()  # a second flush adds nothing
    assert registry.get_sample_value("tallied_jobs_total") == 9
