"""Processors against the real broker: real ``jobstream worker`` processes, requests produced and
events read with real Kafka clients, ClickHouse (chDB) through the session store.

Each test module run uses its own topic prefix, so the shared ``stack`` is never disturbed.
Workers load the misbehaving test calculations of ``tests/calc_plugin.py`` (JOBSTREAM_PLUGINS).
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from pydantic import SecretStr

from jobstream.server import create_app
from processors import dead_letters
from processors.sequence import TERMINAL_SEQ
from sink.group import group_lag
from sink.sink import Sink, SinkConfig
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.control import cancel_record
from streams.events import JobEvent, JobRequested, JobStatus, JobView, new_job_id
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import dumps, load_event
from tests.support.analytics_checks import assert_each_job_counted_once
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

pytestmark = pytest.mark.kafka


class Kafka:
    """Produces requests/commands and collects every event of the scenario's topics, on a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kafka = KafkaConnection.from_settings(settings)
        self.producer = Producer(kafka.producer_config())
        self.events: dict[str, list[JobEvent]] = defaultdict(list)
        self.dead: list[dict] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(kafka.consumer_config(f"test-{uuid.uuid4().hex}"))
        self._consumer.subscribe([settings.topic(topics.EVENTS), settings.topic(topics.DEAD_LETTERS)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, timeout=0.2):
                if message.error():
                    assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                    continue
                with self._lock:
                    if message.topic() == self.settings.topic(topics.DEAD_LETTERS):
                        self.dead.append(dead_letters.load(message.value()))
                    else:
                        event = load_event(message.value())
                        self.events[event.job_id].append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def submit(
        self, kind: str, params: dict, priority: int = 0, timeout_s: float | None = None, job_id: str | None = None
    ) -> str:
        request = JobRequested(
            job_id=job_id or new_job_id(), kind=kind, params=params, priority=priority, timeout_s=timeout_s
        )
        self.produce_raw(dumps(request), key=request.job_id.encode())
        return request.job_id

    def produce_raw(self, value: bytes, key: bytes | None = None) -> None:
        self.producer.produce(self.settings.topic(topics.REQUESTED), key=key, value=value)
        assert self.producer.flush(30) == 0

    def cancel(self, job_id: str, tenant: str = "default") -> None:
        record = cancel_record(self.settings, job_id, tenant)
        self.producer.produce(record.topic, key=record.key, value=record.value)
        assert self.producer.flush(30) == 0

    def of(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            return list(self.events.get(job_id, []))

    def types(self, job_id: str) -> list[str]:
        return [e.type.value for e in sorted(self.of(job_id), key=lambda e: e.seq)]

    def terminal(self, job_id: str) -> JobEvent | None:
        return next((e for e in self.of(job_id) if e.terminal), None)

    def view(self, job_id: str) -> JobView:
        view = JobView.fold(self.of(job_id))
        assert view is not None
        return view

    def wait_terminal(self, job_ids: list[str], timeout_s: float = 120.0, worker: Worker | None = None) -> None:
        def done() -> bool:
            return all(self.terminal(j) is not None for j in job_ids)

        try:
            wait_until(done, timeout_s, 0.1, message=f"{len(job_ids)} terminal events")
        except AssertionError:
            missing = [j for j in job_ids if self.terminal(j) is None]
            raise AssertionError(
                f"{len(missing)} jobs unfinished, e.g. {self.types(missing[0])}\n{worker.tail() if worker else ''}"
            ) from None


@contextmanager
def worker_and_kafka(scoped: Settings) -> Iterator[tuple[Settings, Kafka, Worker]]:
    """One worker process and a Kafka reader/writer on ``scoped``'s topics, for a module's scenarios."""
    kafka = Kafka(scoped)
    worker = Worker(scoped, log=Path(scoped.data_dir) / "worker.log").start()
    try:
        yield scoped, kafka, worker
    finally:
        worker.stop()
        kafka.close()


@pytest.fixture(scope="module")
def scenario(settings: Settings) -> Iterator[tuple[Settings, Kafka, Worker]]:
    """One worker (2 calculation processes) shared by the failure-semantics tests of this module."""
    with worker_and_kafka(isolated(settings, retry_max_attempts=3, crash_max=2)) as running:
        yield running


def assert_seqs_strictly_increase(events: list[JobEvent]) -> None:
    seqs = [e.seq for e in events]  # in the order Kafka delivered them (one partition per job)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs


# --- happy path and batching ---------------------------------------------------------------------
def occupy_both_processes(kafka: Kafka, seconds: float = 1.5) -> list[str]:
    """Keep the worker's two calculation processes busy, so the next jobs pile up into one batch."""
    blockers = [
        kafka.submit("test.work", {"sleep_s": seconds, "steps": 3, "group": uuid.uuid4().hex}) for _ in range(2)
    ]
    wait_until(lambda: all("running" in kafka.types(b) for b in blockers), 60, message="blockers running")
    return blockers


def first_batch_size(kafka: Kafka, job_id: str) -> int:
    return next(
        e.data["batch_size"] for e in sorted(kafka.of(job_id), key=lambda e: e.seq) if e.type.value == "running"
    )


def test_a_burst_runs_in_batches_with_running_then_the_outcome(scenario):
    _, kafka, worker = scenario
    occupy_both_processes(kafka)  # so the burst piles up instead of trickling into free processes
    ids = [kafka.submit("stats.describe", {"values": [1.0, 2.0, float(i)]}) for i in range(40)]
    kafka.wait_terminal(ids, worker=worker)
    sizes = set()
    for i, job_id in enumerate(ids):
        events = kafka.of(job_id)
        # no progress point in stats.describe: running means 0 and succeeded means 1, no progress events
        assert [e.type.value for e in events] == ["running", "succeeded"]
        assert_seqs_strictly_increase(events)
        assert events[-1].seq == TERMINAL_SEQ and 0 < events[0].seq < TERMINAL_SEQ
        assert events[-1].data["result"]["max"] == max(2.0, float(i))
        sizes.add(events[0].data["batch_size"])
    assert max(sizes) > 1  # a burst is batched


def test_long_jobs_report_throttled_monotonic_progress(scenario):
    _, kafka, worker = scenario
    job_id = kafka.submit("test.work", {"sleep_s": 2.0, "steps": 40})
    kafka.wait_terminal([job_id], worker=worker)
    events = kafka.of(job_id)
    progress = [e.data["progress"] for e in events if e.type.value == "progress"]
    assert progress == sorted(progress) and 0.0 < progress[0] and progress[-1] <= 1.0  # the calculation's own
    ran_s = (events[-1].ts - events[0].ts).total_seconds()
    assert 2 <= len(progress) <= ran_s * 4 + 1  # some reports, and at most ~4 per second


# --- failures -------------------------------------------------------------------------------------
def test_a_poison_job_never_fails_its_batch_mates(scenario):
    _, kafka, worker = scenario
    group = uuid.uuid4().hex  # one batch key: they batch together
    occupy_both_processes(kafka)
    ids = [kafka.submit("test.work", {"value": i, "group": group, "explode": i == 5}) for i in range(12)]
    kafka.wait_terminal(ids, worker=worker)
    poison = ids[5]
    assert first_batch_size(kafka, poison) > 1  # it really was in a batch with others, which was split
    assert kafka.view(poison).status is JobStatus.FAILED
    assert kafka.terminal(poison).data["error"]["type"] == "internal_error"
    retrying = [e for e in kafka.of(poison) if e.type.value == "retrying"]
    assert [e.data["attempt"] for e in retrying] == [1, 2]  # 3 attempts in all, each failure visible
    for i, job_id in enumerate(ids):
        if i != 5:
            assert kafka.types(job_id)[-1] == "succeeded", kafka.types(job_id)
            assert "retrying" not in kafka.types(job_id)


def test_a_transient_failure_is_retried_with_backoff_then_succeeds(scenario, tmp_path):
    _, kafka, worker = scenario
    counter = tmp_path / "flaky"
    job_id = kafka.submit("test.work", {"value": 7, "flaky_times": 2, "counter": str(counter)})
    kafka.wait_terminal([job_id], worker=worker)
    events = kafka.of(job_id)
    assert_seqs_strictly_increase(events)
    assert [e.type.value for e in events if e.type.value in ("running", "retrying", "succeeded")] == [
        "running",
        "retrying",
        "running",
        "retrying",
        "running",
        "succeeded",
    ]
    retrying = [e.data for e in events if e.type.value == "retrying"]
    assert [r["attempt"] for r in retrying] == [1, 2] and all(r["error"]["type"] == "transient_error" for r in retrying)
    assert all(0 < r["delay_s"] <= 0.2 for r in retrying)
    assert events[-1].data["attempt"] == 3 and kafka.view(job_id).attempts == 3


def test_permanent_failures_fail_at_once_with_the_reason(scenario):
    _, kafka, worker = scenario
    rejected = kafka.submit("test.work", {"reject": True})
    invalid = kafka.submit("test.work", {"value": "not a number"})
    unknown = kafka.submit("no.such.kind", {})
    kafka.wait_terminal([rejected, invalid, unknown], worker=worker)
    for job_id, reason in ((rejected, "calculation_error"), (invalid, "invalid_params"), (unknown, "unknown_kind")):
        assert kafka.types(job_id)[-1] == "failed" and "retrying" not in kafka.types(job_id)
        assert kafka.terminal(job_id).data["error"]["type"] == reason


def test_undecodable_requests_go_to_dead_letters_with_their_bytes(scenario):
    _, kafka, worker = scenario
    garbage = b"\x00\xffnot json at all"
    known_id = new_job_id()
    half = orjson.dumps({"job_id": known_id, "tenant": "acme", "kind": "stats.describe", "params": "oops"})
    kafka.produce_raw(garbage, key=b"garbage")
    kafka.produce_raw(half, key=known_id.encode())
    wait_until(
        lambda: len([d for d in kafka.dead if d["reason"] == "undecodable"]) >= 2, 60, message="two dead letters"
    )
    by_original = {d["original"]: d for d in kafka.dead}
    assert by_original[garbage]["job_id"] is None and by_original[garbage]["source"]["topic"].endswith(topics.REQUESTED)
    assert by_original[half]["job_id"] == known_id and "params" in by_original[half]["error"]
    assert by_original[half]["kind"] == "stats.describe" and by_original[garbage]["kind"] == "unknown"
    kafka.wait_terminal([known_id], worker=worker)
    failed = kafka.terminal(known_id)
    assert failed.type.value == "failed" and failed.tenant == "acme" and failed.data["error"]["type"] == "undecodable"


def test_a_job_that_keeps_crashing_its_process_is_dead_lettered_alone(scenario):
    _, kafka, worker = scenario
    group = uuid.uuid4().hex
    occupy_both_processes(kafka)
    ids = [kafka.submit("test.work", {"value": i, "group": group, "crash": i == 2}) for i in range(6)]
    kafka.wait_terminal(ids, worker=worker)
    crasher = ids[2]
    assert first_batch_size(kafka, crasher) > 1
    failed = kafka.terminal(crasher)
    assert failed.type.value == "failed" and failed.data["error"]["type"] == "crashed"
    assert [e.data["error"]["type"] for e in kafka.of(crasher) if e.type.value == "retrying"] == ["crashed"]
    wait_until(lambda: any(d["job_id"] == crasher for d in kafka.dead), 30, message="crash dead letter")
    letter = next(d for d in kafka.dead if d["job_id"] == crasher)
    assert (
        letter["reason"] == "crashed"
        and letter["kind"] == "test.work"
        and JobRequested.model_validate(orjson.loads(letter["original"])).job_id == crasher
    )
    for i, job_id in enumerate(ids):
        if i != 2:
            assert kafka.types(job_id)[-1] == "succeeded"


def test_timeouts_cooperative_and_hard_fail_only_the_late_job(scenario):
    _, kafka, worker = scenario
    group = uuid.uuid4().hex
    slow = kafka.submit("test.work", {"sleep_s": 30, "steps": 300, "group": group}, timeout_s=0.5)
    ok = kafka.submit("test.work", {"value": 1, "group": group})
    hung = kafka.submit("test.work", {"hang_s": 60, "group": uuid.uuid4().hex}, timeout_s=0.5)
    kafka.wait_terminal([slow, ok, hung], timeout_s=90, worker=worker)
    for job_id in (slow, hung):
        assert kafka.view(job_id).status is JobStatus.FAILED
        assert kafka.terminal(job_id).data["error"]["type"] == "timeout"
    assert "killed" in kafka.terminal(hung).data["error"]["message"]
    assert kafka.types(ok)[-1] == "succeeded"


# --- cancellation and priorities (one calculation process, so jobs really queue) ----------------------
@pytest.fixture(scope="module")
def single(settings: Settings) -> Iterator[tuple[Settings, Kafka, Worker]]:
    with worker_and_kafka(isolated(settings, calc_processes=1, batch_max_size=4)) as running:
        yield running


def running_ts(kafka: Kafka, job_id: str) -> float:
    return min(e.ts.timestamp() for e in kafka.of(job_id) if e.type.value == "running")


def test_cancel_before_start_while_queued_and_while_running(single):
    _, kafka, worker = single
    early = new_job_id()
    kafka.cancel(early)  # cancelled before it was even submitted
    blocker = kafka.submit("test.work", {"sleep_s": 60, "steps": 600, "group": "a"})
    wait_until(lambda: "running" in kafka.types(blocker), 60, message="blocker running")
    queued = kafka.submit("test.work", {"value": 1, "group": "b"})
    kafka.submit("test.work", {"value": 2}, job_id=early)
    kafka.cancel(queued)  # held by the worker or still in Kafka: either way it never starts
    kafka.wait_terminal([queued, early], worker=worker)
    for job_id in (queued, early):
        assert kafka.types(job_id) == ["cancelled"], kafka.types(job_id)  # never started
    kafka.cancel(blocker)
    kafka.wait_terminal([blocker], timeout_s=30, worker=worker)  # far less than its 60 s
    assert kafka.types(blocker)[-1] == "cancelled" and kafka.view(blocker).status is JobStatus.CANCELLED
    after = kafka.submit("test.work", {"value": 3})
    kafka.wait_terminal([after], worker=worker)
    assert kafka.types(after)[-1] == "succeeded"  # the process survived the cancel


def test_a_high_priority_job_is_not_stuck_behind_a_low_priority_backlog(single):
    _, kafka, worker = single
    blocker = kafka.submit("test.work", {"sleep_s": 3.0, "steps": 10, "group": "p"})
    wait_until(lambda: "running" in kafka.types(blocker), 60, message="blocker running")
    low = [kafka.submit("test.work", {"sleep_s": 0.3, "steps": 2, "group": "p"}) for _ in range(12)]
    urgent = kafka.submit("test.work", {"value": 9, "group": "p"}, priority=9)
    kafka.wait_terminal([blocker, urgent, *low], timeout_s=120, worker=worker)
    started_before_urgent = [j for j in low if running_ts(kafka, j) < running_ts(kafka, urgent)]
    assert len(started_before_urgent) <= 4, "the urgent job waited behind the backlog"


# --- crashes and scale-out -------------------------------------------------------------------------
def finish_counts(kafka: Kafka, ids: list[str]) -> dict[str, set[int]]:
    return {j: {e.seq for e in kafka.of(j) if e.terminal} for j in ids}


def test_kill_9_mid_batch_then_restart_every_job_ends_once(settings: Settings, store: ClickHouseStore):
    scoped = isolated(settings, batch_max_size=8, latency_target_ms=60_000, requested_partitions=4)
    kafka = Kafka(scoped)
    sink = Sink(KafkaConnection.from_settings(scoped), store, SinkConfig.from_settings(scoped)).start()
    first = Worker(scoped, index=0, log=Path(scoped.data_dir) / "first.log").start()
    second = Worker(scoped, index=1, log=Path(scoped.data_dir) / "second.log")
    try:
        ids = [kafka.submit("test.work", {"value": i, "sleep_s": 0.6, "steps": 3}) for i in range(24)]
        # Kill when some jobs are done and others are mid-batch.
        wait_until(lambda: sum(kafka.terminal(j) is not None for j in ids) >= 4, 120, message="some jobs done")
        first.kill9()
        second.start()
        kafka.wait_terminal(ids, timeout_s=180, worker=second)
        rerun = [j for j in ids if len({e.data.get("worker") for e in kafka.of(j) if e.type.value == "running"}) > 1]
        assert rerun, "no job was caught mid-batch by the kill"
        for job_id, seqs in finish_counts(kafka, ids).items():
            assert seqs == {TERMINAL_SEQ}, (job_id, seqs)  # re-run terminals collapse into one
            view = kafka.view(job_id)
            assert view.status is JobStatus.SUCCEEDED and view.result["value"] == ids.index(job_id)
            nonterminal = [e.seq for e in kafka.of(job_id) if not e.terminal]
            assert len(nonterminal) == len(set(nonterminal)), "a re-run reused a seq"

        # ClickHouse: one terminal per job as readers see it, one result row per job.
        def all_results_in() -> bool:
            rows = store.query(
                "SELECT count(DISTINCT job_id) FROM job_results WHERE job_id IN {ids:Array(String)}", {"ids": ids}
            )
            return rows[0][0] == len(ids)

        wait_until(all_results_in, 60, message="results in ClickHouse")
        rows = store.query(
            "SELECT job_id, count() FROM job_results FINAL WHERE job_id IN {ids:Array(String)} GROUP BY job_id",
            {"ids": ids},
        )
        assert sorted(r[0] for r in rows) == sorted(ids) and {r[1] for r in rows} == {1}
        for job_id in rerun:
            history = store.job_events("default", job_id)
            assert [e.type.value for e in history if e.terminal] == ["succeeded"]
    finally:
        first.stop()
        second.stop()
        sink.stop()
        kafka.close()


def processors_caught_up(settings: Settings) -> bool:
    """The processors' group committed every request: no re-run is still under way. (A tenant's requests
    use only some partitions: streams.partitioning.)"""
    topic = settings.topic(topics.REQUESTED)
    reader = Consumer(KafkaConnection.from_settings(settings).consumer_config(settings.topic(topics.PROCESSORS_GROUP)))
    try:
        partitions = [TopicPartition(topic, p) for p in reader.list_topics(topic, timeout=10).topics[topic].partitions]
        committed = reader.committed(partitions, timeout=10)

        def done(tp: TopicPartition) -> bool:  # a partition no request went to has nothing to commit
            low, high = reader.get_watermark_offsets(tp, timeout=10, cached=False)
            return low == high or tp.offset >= high

        return all(done(tp) for tp in committed)
    finally:
        reader.close()


def api_view(http: httpx.Client, tenant: str, job_id: str) -> JobView:
    """The JobView behind GET /v1/jobs/{id} (and /result for the calculation version)."""
    body = http.get(f"/v1/jobs/{job_id}").json()
    calc_version = http.get(f"/v1/jobs/{job_id}/result").json().get("calc_version")
    return JobView.model_validate({**body, "tenant": tenant, "calc_version": calc_version})


def test_kill_9_mid_batch_analytics_count_each_job_once_with_the_apis_timings(
    settings: Settings, store: ClickHouseStore
):
    """The whole stack (API + gateway + sink, real workers): jobs caught by a kill -9 run twice, yet
    job_outcomes, job_results, the per-minute views and /v1/stats count each one once, with the
    timings GET /v1/jobs/{id} reports."""
    tenant, key = f"kill-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    scoped = isolated(
        settings,
        batch_max_size=8,
        latency_target_ms=60_000,
        requested_partitions=4,
        api_keys=SecretStr(f"{tenant}={key}"),
    )
    kafka = Kafka(scoped)
    server = Server(create_app(scoped, store=store)).start()
    first = Worker(scoped, index=0, log=Path(scoped.data_dir) / "first.log").start()
    second = Worker(scoped, index=1, log=Path(scoped.data_dir) / "second.log")
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    try:
        wait_until(lambda: http.get("/healthz").status_code == 200, 60, message="stack ready")
        ids = [
            http.post(
                "/v1/jobs", json={"kind": "test.work", "params": {"value": i, "sleep_s": 0.6, "steps": 3}}
            ).json()["job_id"]
            for i in range(24)
        ]
        wait_until(lambda: sum(kafka.terminal(j) is not None for j in ids) >= 4, 120, message="some jobs done")
        first.kill9()
        second.start()
        kafka.wait_terminal(ids, timeout_s=180, worker=second)
        wait_until(lambda: processors_caught_up(scoped), 120, 0.5, message="re-runs finished and committed")
        wait_until(lambda: group_lag(KafkaConnection.from_settings(scoped), scoped) == 0, 60, message="sink caught up")
        rerun = [j for j in ids if len({e.data.get("worker") for e in kafka.of(j) if e.type.value == "running"}) > 1]
        assert rerun, "no job was caught mid-batch by the kill"
        twice = store.query(
            "SELECT count() FROM job_events WHERE tenant = {t:String} AND type = 'running'", {"t": tenant}
        )[0][0]
        assert twice > len(ids)  # the raw log holds the re-runs
        views = {j: api_view(http, tenant, j) for j in ids}
        assert all(v.status is JobStatus.SUCCEEDED for v in views.values())
        assert_each_job_counted_once(store, tenant, views)
        stats = http.get("/v1/stats", params={"since": "1h"}).json()
        assert (stats["submitted"], stats["finished"], stats["succeeded"]) == (len(ids), len(ids), len(ids))
    finally:
        http.close()
        first.stop()
        second.stop()
        server.stop()
        kafka.close()


def test_two_workers_share_partitions_and_stopping_one_loses_nothing(settings: Settings):
    scoped = isolated(settings, requested_partitions=4, batch_max_size=4)
    kafka = Kafka(scoped)
    a = Worker(scoped, index=0, log=Path(scoped.data_dir) / "a.log").start()
    b = Worker(scoped, index=1, log=Path(scoped.data_dir) / "b.log").start()
    try:

        def workers_seen(ids: list[str]) -> set[str]:
            return {e.data["worker"] for j in ids for e in kafka.of(j) if e.type.value == "running"}

        warmup: list[str] = []

        def both_working() -> bool:  # b may join after a took every partition: keep feeding until both run jobs
            warmup.extend(kafka.submit("test.work", {"value": i}) for i in range(8))
            return len(workers_seen(warmup)) == 2

        wait_until(both_working, 120, 0.5, message="both workers own partitions")
        kafka.wait_terminal(warmup, worker=b)
        ids = [kafka.submit("test.work", {"value": i, "sleep_s": 0.3, "steps": 3}) for i in range(40)]
        wait_until(lambda: sum(kafka.terminal(j) is not None for j in ids) >= 5, 120, message="load under way")
        a.stop()  # SIGTERM: a graceful stop hands a's partitions to b
        assert a.process is not None and a.process.returncode is not None
        kafka.wait_terminal(ids, timeout_s=180, worker=b)
        for job_id, seqs in finish_counts(kafka, ids).items():
            assert seqs == {TERMINAL_SEQ}
            assert kafka.view(job_id).status is JobStatus.SUCCEEDED
        assert len(workers_seen(ids)) == 2
    finally:
        a.stop()
        b.stop()
        kafka.close()


# --- through the HTTP API (the shared stack) ---------------------------------------------------------
def test_delete_over_http_stops_a_running_job_at_its_next_progress_point(client):
    n = 100  # 100 assets: ~125 chunks of paths, each a progress point
    params = {
        "weights": [1.0 / n] * n,
        "mu": [0.0] * n,
        "cov": [[0.0001 if i == j else 0.0 for j in range(n)] for i in range(n)],
        "horizon_days": 1,
        "paths": 10_000_000,
        "confidence": 0.99,
        "seed": 3,
    }
    job_id = client.post("/v1/jobs", json={"kind": "montecarlo.var", "params": params}).json()["job_id"]
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 120, 0.1, message="job running")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
    final = wait_until(
        lambda: (v := client.get(f"/v1/jobs/{job_id}").json())["status"] in {"succeeded", "failed", "cancelled"} and v,
        120,
        0.1,
        message="job finished",
    )
    assert final["status"] == "cancelled", final
    assert final["progress"] < 1.0
