"""Traces across processes, through Kafka, exported over OTLP/HTTP; and JSON log lines.

A real ``jobstream up`` (API + SSE gateway + sink in one process, a worker process) exports to an
OTLP/HTTP receiver running in the test, which decodes the protobuf spans: one job's trace must
hold the API's span, the worker's span (a child of it: the context crossed Kafka) and the sink's.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from streams import topics
from streams.settings import Settings
from telemetry import tracing
from telemetry.logs import JsonFormatter, log_context
from tests.support.kafka import request_headers
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.service_process import ServiceProcess, service_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

API_KEY = "alice-" + "s3cr3t" * 4  # must never show up in a log line
TERMINAL = {"succeeded", "failed", "cancelled"}
SUBMIT, JOB = "jobstream.submit", "jobstream.job"  # the API's span of a submit; the worker's span of a job


def traceparent() -> tuple[str, str, str]:
    """A client's own W3C traceparent, with its trace id and span id."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def ids_of(header: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = header.split("-")
    assert version == "00" and len(trace_id) == 32 and len(span_id) == 16, header
    assert int(flags, 16) & 1, header  # sampled
    return trace_id, span_id


class Stack:
    def __init__(self, process: ServiceProcess, receiver: OtlpReceiver, stderr: Path) -> None:
        self.process = process
        self.receiver = receiver
        self.stderr = stderr
        self.client = httpx.Client(base_url=process.url, timeout=30, headers={"Authorization": f"Bearer {API_KEY}"})

    def submit(self, **headers: str) -> httpx.Response:
        body = {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0]}}
        return self.client.post("/v1/jobs", json=body, headers=headers)

    def finished(self, job_id: str) -> str:
        def status() -> str | None:
            response = self.client.get(f"/v1/jobs/{job_id}")
            value = response.json()["status"] if response.status_code == 200 else None
            return value if value in TERMINAL else None

        return str(wait_until(status, 60, 0.1, message=f"job {job_id} to finish"))

    def root_parent(self, span: ReceivedSpan) -> str:
        """Where ``span``'s ancestry leaves what was exported: "" for a root, else the remote parent's id."""
        by_id = {s.span_id: s for s in self.receiver.spans(span.trace_id)}
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
        return span.parent_span_id

    def wait_root(self, span: ReceivedSpan, parent: str) -> None:
        wait_until(
            lambda: self.root_parent(span) == parent, 30, 0.1, message=f"{span.name}'s ancestry to end at {parent!r}"
        )

    def spans(self, trace_id: str, *names: str, timeout_s: float = 30) -> dict[str, list[ReceivedSpan]]:
        """The trace's spans by name, once every one of ``names`` arrived."""

        def found() -> dict[str, list[ReceivedSpan]] | None:
            by_name: dict[str, list[ReceivedSpan]] = {}
            for span in self.receiver.spans(trace_id):
                by_name.setdefault(span.name, []).append(span)
            return by_name if all(name in by_name for name in names) else None

        result = wait_until(found, timeout_s, 0.1, message=f"spans {names} of trace {trace_id}")
        assert isinstance(result, dict)
        return result


@pytest.fixture(scope="module")
def traced(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("traced")
    receiver = OtlpReceiver().start()
    env = service_env(
        kafka_bootstrap,
        f"tr{uuid.uuid4().hex[:8]}.",
        home,
        workers="1",
        calc_processes="1",
        batch_max_wait_ms="20",
        sink_batch_max_wait_ms="50",
        log_format="json",
        api_keys=f"alice={API_KEY}",
    )
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    process = ServiceProcess(["up", "--log-level", "debug"], env, home / "up.log", stderr=home / "up.err")
    process.start()
    stack = Stack(process, receiver, home / "up.err")
    try:
        yield stack
    finally:
        stack.client.close()
        process.stop()
        receiver.stop()


def test_one_trace_spans_the_api_a_worker_and_the_sink(traced: Stack):
    header, client_trace, client_span = traceparent()
    response = traced.submit(traceparent=header)

    assert response.status_code == 202
    trace_id, api_span = ids_of(response.headers["traceparent"])
    assert trace_id == client_trace and api_span != client_span  # continued: our span, the client's trace
    job_id = response.json()["job_id"]
    assert traced.finished(job_id) == "succeeded"

    spans = traced.spans(trace_id, SUBMIT, JOB, "jobstream.sink.insert", "jobstream.sse.fanout")
    (api,) = spans[SUBMIT]
    (run,) = spans[JOB]
    assert (api.service, api.span_id) == ("jobstream-server", api_span)
    # under FastAPI's HTTP span (exported when the answer went out), which continued the client's
    traced.wait_root(api, client_span)
    # the worker is another process (its own service name) and continued the context the request record carried
    assert (run.service, run.parent_span_id) == ("jobstream-worker", api_span)
    assert run.attributes["jobstream.job_id"] == job_id
    assert run.attributes["jobstream.outcome"] == "succeeded"
    # the queued event carries the API's context, the worker's events the worker span's
    for name in ("jobstream.sink.insert", "jobstream.sse.fanout"):

        def children() -> list[ReceivedSpan] | None:
            found = [s for s in traced.receiver.spans(trace_id) if s.name == name]
            return found if run.span_id in {s.parent_span_id for s in found} else None

        found = wait_until(children, 30, 0.1, message=f"a {name} span of the worker's events")
        assert isinstance(found, list)
        assert {s.parent_span_id for s in found} <= {api_span, run.span_id}
        assert {s.service for s in found} == {"jobstream-server"}


def test_without_a_traceparent_a_job_starts_its_own_trace(traced: Stack):
    response = traced.submit()
    assert response.status_code == 202
    trace_id, api_span = ids_of(response.headers["traceparent"])
    assert traced.finished(response.json()["job_id"]) == "succeeded"
    spans = traced.spans(trace_id, SUBMIT, JOB)
    traced.wait_root(spans[SUBMIT][0], "")  # a trace of its own
    assert spans[JOB][0].parent_span_id == api_span


@pytest.mark.parametrize(
    "bad",
    [
        "garbage",
        "",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",  # all-zero trace id: invalid
        "00-" + "1" * 32 + "-" + "0" * 16 + "-01",  # all-zero span id: invalid
        "ff-" + "1" * 32 + "-" + "1" * 16 + "-01",  # version ff: forbidden
        "00-" + "g" * 32 + "-" + "1" * 16 + "-01",  # not hex
        "00-" + "1" * 32 + "-" + "1" * 16 + "-01-" + "x" * 4000,  # huge
        "00-ÿÿÿÿ-ÿ-01",  # not ASCII (sent as latin-1 bytes)
    ],
)
def test_a_malformed_traceparent_is_ignored(traced: Stack, bad: str):
    response = traced.client.post(
        "/v1/jobs",
        json={"kind": "stats.describe", "params": {"values": [1.0]}},
        headers=[("traceparent", bad.encode("latin-1")), ("tracestate", "k=v")],
    )
    assert response.status_code == 202, response.text
    trace_id, api_span = ids_of(response.headers["traceparent"])
    assert trace_id not in bad
    spans = traced.spans(trace_id, SUBMIT)
    traced.wait_root(spans[SUBMIT][0], "")  # a new trace, not a child of the bad one


def test_a_batch_and_a_rerun_continue_their_requests_traces(traced: Stack):
    header, client_trace, _ = traceparent()
    jobs = [{"kind": "stats.describe", "params": {"values": [float(i)]}} for i in range(3)]
    response = traced.client.post("/v1/jobs:batch", json={"jobs": jobs}, headers={"traceparent": header})
    assert response.status_code == 202
    trace_id, batch_span = ids_of(response.headers["traceparent"])
    assert trace_id == client_trace
    job_ids = [item["job_id"] for item in response.json()["jobs"]]
    for job_id in job_ids:
        assert traced.finished(job_id) == "succeeded"

    def runs() -> set[str] | None:
        found = {s.attributes["jobstream.job_id"] for s in traced.receiver.spans(trace_id) if s.name == JOB}
        return found if found >= set(job_ids) else None

    wait_until(runs, 30, 0.1, message="a worker span per job of the batch")
    assert {s.parent_span_id for s in traced.receiver.spans(trace_id) if s.name == JOB} == {batch_span}

    header, client_trace, _ = traceparent()
    rerun = traced.client.post(f"/v1/jobs/{job_ids[0]}:rerun", headers={"traceparent": header})
    assert rerun.status_code == 202, rerun.text
    trace_id, rerun_span = ids_of(rerun.headers["traceparent"])
    assert trace_id == client_trace
    new_id = rerun.json()["job_id"]
    assert traced.finished(new_id) == "succeeded"
    (run,) = traced.spans(trace_id, JOB)[JOB]
    assert run.attributes["jobstream.job_id"] == new_id and run.parent_span_id == rerun_span


def test_json_logs_name_the_job_tenant_and_trace_and_never_the_key(traced: Stack):
    header, client_trace, _ = traceparent()
    response = traced.submit(traceparent=header)
    job_id = response.json()["job_id"]
    assert traced.finished(job_id) == "succeeded"

    def accepted_line() -> dict | None:
        for line in traced.stderr.read_text().splitlines():
            record = orjson.loads(line)
            if record.get("job_id") == job_id and record.get("message") == f"accepted job {job_id}":
                return record
        return None

    record = wait_until(accepted_line, 30, 0.1, message="the API's log line of the job")
    assert isinstance(record, dict)
    assert record["tenant"] == "alice" and record["trace_id"] == client_trace
    assert record["level"] == "debug" and record["logger"] == "ingest_api.routes"

    text = traced.stderr.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    records = [orjson.loads(line) for line in lines]  # every line of stderr is one JSON object
    assert all(isinstance(r, dict) and {"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["logger"].startswith("processors.") for r in records)  # the worker process logs JSON too
    assert API_KEY not in text and API_KEY not in traced.process.tail()


def test_nothing_is_exported_without_otel_settings(client: httpx.Client, settings: Settings):
    """The session stack runs with no OTEL_* variables: a traceparent is passed through untouched, and
    nothing reaches the OTLP default endpoint (localhost:4318), from this process or the worker."""
    receivers = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            receiver = OtlpReceiver(host, 4318)
        except OSError as exc:
            if family == socket.AF_INET:
                raise AssertionError(f"port 4318 (OTLP's default) is taken: {exc}") from None
            continue  # no IPv6 loopback here
        receivers.append(receiver.start())
    try:
        assert not tracing.enabled()
        header, client_trace, client_span = traceparent()
        response = client.post(
            "/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1.0]}}, headers={"traceparent": header}
        )
        assert response.status_code == 202
        assert response.headers["traceparent"] == header  # passed through: no span of ours
        job_id = response.json()["job_id"]
        wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] in TERMINAL, 60, 0.1, message="job")
        untraced = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1.0]}})
        assert "traceparent" not in untraced.headers
        requested = settings.topic(topics.REQUESTED)
        assert request_headers(settings.kafka_bootstrap or "", requested, untraced.json()["job_id"]) is None
        assert request_headers(settings.kafka_bootstrap or "", requested, job_id) == [("traceparent", header.encode())]
        deadline = time.monotonic() + 3.0  # 6 export intervals of OTEL_BSP_SCHEDULE_DELAY's default... none came
        while time.monotonic() < deadline:
            assert all(r.requests == 0 for r in receivers)
            time.sleep(0.1)
    finally:
        for receiver in receivers:
            receiver.stop()


# --- units ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
    ],
)
def test_which_environment_turns_tracing_on(environ: dict[str, str], on: bool):
    assert tracing.enabled_by(environ) is on


def test_json_formatter_takes_fields_from_extra_or_context_and_redacts_secret_names():
    formatter = JsonFormatter()

    def line(**extra: object) -> dict:
        record = logging.LogRecord("jobstream.x", logging.WARNING, __file__, 1, "multi\nline %s", ("ü",), None)
        for key, value in extra.items():
            setattr(record, key, value)
        out = formatter.format(record)
        assert "\n" not in out
        return orjson.loads(out)

    with log_context(job_id="j1", tenant="t1"):
        assert line()["job_id"] == "j1" and line()["tenant"] == "t1"
        assert line(job_id="j2")["job_id"] == "j2"
    plain = line(api_key="k", password="p", batch_size=3)
    assert "job_id" not in plain and plain["message"] == "multi\nline ü" and plain["level"] == "warning"
    assert plain["api_key"] == "[redacted]" and plain["password"] == "[redacted]" and plain["batch_size"] == 3


def test_a_replays_jobs_continue_the_trace_of_the_request_that_started_it(traced: Stack):
    from replay.models import replayed_job_id

    original = traced.submit().json()["job_id"]
    assert traced.finished(original) == "succeeded"
    header, client_trace, _ = traceparent()
    response = traced.client.post("/v1/replays", json={"job_ids": [original]}, headers={"traceparent": header})
    assert response.status_code == 202, response.text
    trace_id, replay_span = ids_of(response.headers["traceparent"])
    assert trace_id == client_trace
    new_id = replayed_job_id(response.json()["replay_id"], original)
    assert traced.finished(new_id) == "succeeded"
    (run,) = traced.spans(trace_id, JOB)[JOB]
    assert run.attributes["jobstream.job_id"] == new_id and run.parent_span_id == replay_span


def test_a_refused_traced_request_is_a_4xx_and_its_span_says_so(traced: Stack):
    header, client_trace, _ = traceparent()
    response = traced.client.post("/v1/jobs/no-such-job:rerun", headers={"traceparent": header})
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    (span,) = traced.spans(client_trace, "jobstream.rerun")["jobstream.rerun"]
    assert span.attributes["jobstream.outcome"] == "404"
