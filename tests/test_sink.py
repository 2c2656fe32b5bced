"""The sink: Kafka → ClickHouse exactly once, through crashes, redelivery and ClickHouse outages.

Real broker, real ClickHouse (the session's chDB, or CLICKHOUSE_URL's server).
The crash tests run the sink in child processes that SIGKILL themselves at a
chosen point of a batch; with chDB the children use a data dir of their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Consumer, Message, TopicPartition

from bench.histories import job_history
from sink.group import GROUP_ID, group_lag
from sink.intents import INTENT_PREFIX, Ranges
from sink.rows import JobTimes, build_rows
from sink.sink import Sink, SinkConfig
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.events import JobView, utcnow
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import dumps
from tests.support import ROOT
from tests.support.analytics_checks import assert_each_job_counted_once, ms
from tests.support.kafka import produce
from tests.support.reruns import run_twice
from tests.support.waiting import wait_until


# --- pure logic ------------------------------------------------------------------------------
def message(partition: int, offset: int, value: bytes = b"{}") -> Message:
    return Message(topic="t", partition=partition, offset=offset, value=value)


def test_ranges_name_a_batch_exactly_and_round_trip():
    ranges = Ranges.of([message(3, 50), message(0, 100), message(3, 51), message(0, 101), message(0, 102)])
    assert ranges.describe() == "0:100-102,3:50-51"
    assert Ranges.parse(ranges.describe()) == ranges
    assert ranges.token("jobs.events") == "jobs.events/0:100-102,3:50-51"
    assert ranges.first(3) == 50 and ranges.first(7) is None
    assert Ranges.parse("garbage") is None
    many = Ranges(tuple((p, 10**12, 10**12 + 5000) for p in range(100)))
    assert len(many.token("jobs.events")) < 100  # long descriptions are hashed, deterministically
    assert many.token("jobs.events") == Ranges.parse(many.describe()).token("jobs.events")


def lines(rows, looked_up=None) -> list[dict]:  # type: ignore[no-untyped-def]
    return [orjson.loads(line) for line in rows.body(looked_up or {}).split(b"\n")]


def test_terminal_events_carry_their_jobs_submit_and_start_times():
    start = utcnow() - timedelta(minutes=5)
    history = job_history("acme", start=start, queue_s=1.5, run_s=4.0)
    rows = build_rows([message(2, 10 + i, dumps(e)) for i, e in enumerate(history)], JobTimes(10), lambda m: None)
    assert rows.missing_times() == []
    decoded = lines(rows)
    assert [(d["kafka_partition"], d["kafka_offset"], d["seq"]) for d in decoded] == [
        (2, 10, 0),
        (2, 11, 1),
        (2, 12, 2),
        (2, 13, 3),
    ]
    assert "submitted_at" not in decoded[0] and decoded[3]["data"] == history[3].data
    assert (decoded[3]["submitted_at"], decoded[3]["started_at"]) == (
        history[0].ts.isoformat(),
        history[1].ts.isoformat(),
    )


def test_times_not_seen_are_looked_up_and_bad_messages_are_skipped():
    history = job_history("acme", outcome="failed")
    skipped: list[Message] = []
    odd = orjson.dumps({**history[-1].model_dump(mode="json"), "kafka_offset": "forged", "extra": 1})
    values = [b"not json", b"[1]", dumps(history[0]).replace(b'"seq":0', b'"seq":-1'), odd]
    rows = build_rows([message(0, 7 + i, v) for i, v in enumerate(values)], JobTimes(10), skipped.append)
    assert [m.offset() for m in skipped] == [7, 8, 9]
    key = ("acme", history[0].job_id)
    assert rows.missing_times() == [key]
    (failed,) = lines(rows, {key: (history[0].ts, history[1].ts)})
    assert failed["kafka_offset"] == 10 and "extra" not in failed  # normalised through JobEvent
    assert failed["submitted_at"] == history[0].ts.isoformat() and failed["type"] == "failed"


def test_an_event_in_non_canonical_form_is_normalised():
    event = job_history("x")[0]
    sparse = orjson.dumps(
        {"job_id": event.job_id, "seq": 0, "type": "queued", "kind": "k", "ts": "2026-01-01T00:00:00"}
    )  # no tenant, version, data or zone
    (line,) = lines(build_rows([message(0, 1, sparse)], JobTimes(10), lambda m: None))
    assert (line["tenant"], line["schema_version"], line["data"]) == ("default", 1, {})
    assert line["ts"] == "2026-01-01T00:00:00Z"  # read as UTC


def test_job_times_forget_the_oldest_jobs_past_capacity():
    times = JobTimes(2)
    keys = [("t", str(i)) for i in range(3)]
    now = utcnow()
    for key in keys:
        times.queued(key, now)
    assert len(times) == 2
    assert times.pop(keys[0]) is None
    assert times.pop(keys[2]) == (now, None)


# --- against Kafka and ClickHouse ---------------------------------------------------------------
needs_kafka = pytest.mark.kafka


@pytest.fixture
def sink_settings(settings: Settings) -> Settings:
    """Topics and consumer group of this test only (the stack's sink never sees them)."""
    own = settings.model_copy(
        update={
            "topic_prefix": f"{settings.topic_prefix}sink{uuid.uuid4().hex[:6]}.",
            "sink_batch_max_size": 100,
            "sink_batch_max_wait_ms": 50,
            "sink_retry_max_s": 0.5,
        }
    )
    ensure_topics(KafkaConnection.from_settings(own), own)
    return own


def histories(tenant: str, jobs: int, **kwargs) -> list:  # type: ignore[no-untyped-def]
    return [event for _ in range(jobs) for event in job_history(tenant, **kwargs)]


def counts(store: ClickHouseStore, tenant: str) -> dict[str, int]:
    t = {"t": tenant}
    one = lambda sql: int(store.query(sql, t)[0][0] or 0)  # noqa: E731
    return {
        "events": one("SELECT count() FROM job_events WHERE tenant = {t:String}"),
        "distinct_events": one("SELECT uniqExact(job_id, seq) FROM job_events WHERE tenant = {t:String}"),
        "results": one("SELECT count() FROM job_results WHERE tenant = {t:String}"),
        "outcomes": one("SELECT count() FROM job_outcomes WHERE tenant = {t:String}"),
        "counted_events": one("SELECT sum(events) FROM event_counts WHERE tenant = {t:String}"),
    }


@needs_kafka
def test_events_results_outcomes_and_state_land_once(sink_settings: Settings, store: ClickHouseStore):
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    events = histories(tenant, 30) + histories(tenant, 10, outcome="failed", batch_size=2)
    produce(KafkaConnection.from_settings(sink_settings), sink_settings, events)
    sink = Sink(KafkaConnection.from_settings(sink_settings), store, SinkConfig.from_settings(sink_settings)).start()
    try:
        wait_until(
            lambda: group_lag(KafkaConnection.from_settings(sink_settings), sink_settings) == 0,
            60,
            message="sink to commit everything",
        )
    finally:
        sink.stop()
    assert counts(store, tenant) == {
        "events": 160,
        "distinct_events": 160,
        "results": 30,
        "outcomes": 40,
        "counted_events": 160,
    }
    assert sink.stats.batches_written >= 2  # 160 events, batches of at most 100
    statuses = dict(
        store.query("SELECT status, count() FROM jobs WHERE tenant = {t:String} GROUP BY status", {"t": tenant})
    )
    assert statuses == {"succeeded": 30, "failed": 10}
    timed = store.query(
        "SELECT min(queue_wait_s), max(queue_wait_s), min(run_s), max(total_s) FROM job_results "
        "WHERE tenant = {t:String}",
        {"t": tenant},
    )
    assert timed == [(1.0, 1.0, 2.0, 3.0)]


@needs_kafka
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the deliberate kill
def test_a_redelivered_batch_is_cut_exactly_as_before_even_with_another_batch_size(
    sink_settings: Settings, store: ClickHouseStore
):
    """A sink dies between insert and commit; the next one (other limits) replays the same ranges."""
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    produce(KafkaConnection.from_settings(sink_settings), sink_settings, histories(tenant, 40))

    class Killed(BaseException):
        pass

    class DiesBeforeCommit(Sink):
        def _commit(self, ranges, *, intent):  # type: ignore[no-untyped-def]
            if not intent:
                raise Killed()  # the thread ends here: rows inserted, offsets not committed
            return super()._commit(ranges, intent=intent)

    first = DiesBeforeCommit(
        KafkaConnection.from_settings(sink_settings), store, SinkConfig.from_settings(sink_settings)
    ).start()
    wait_until(lambda: not first.running, 60, message="the first sink to die")
    first.stop()  # leaves the group; commits nothing
    written = counts(store, tenant)["events"]
    assert 0 < written <= 100 and first.stats.batches_written == 1
    intents = committed_metadata(sink_settings)
    assert any(m.startswith(INTENT_PREFIX) for m in intents.values())

    bigger = sink_settings.model_copy(update={"sink_batch_max_size": 5000})
    second = Sink(KafkaConnection.from_settings(bigger), store, SinkConfig.from_settings(bigger)).start()
    try:
        wait_until(lambda: group_lag(KafkaConnection.from_settings(bigger), bigger) == 0, 60, message="catch-up")
    finally:
        second.stop()
    assert second.stats.batches_replayed == 1
    assert counts(store, tenant) == {
        "events": 160,
        "distinct_events": 160,
        "results": 40,
        "outcomes": 40,
        "counted_events": 160,
    }
    assert not any(m.startswith(INTENT_PREFIX) for m in committed_metadata(sink_settings).values())


def committed_metadata(settings: Settings) -> dict[int, str]:
    topic = settings.topic(topics.EVENTS)
    reader = Consumer(KafkaConnection.from_settings(settings).consumer_config(settings.topic(GROUP_ID)))
    try:
        partitions = reader.list_topics(topic, timeout=10).topics[topic].partitions
        found = reader.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.metadata or "" for tp in found if tp.offset >= 0}
    finally:
        reader.close()


@needs_kafka
def test_clickhouse_outage_pauses_the_sink_lag_grows_nothing_is_lost(
    sink_settings: Settings, store: ClickHouseStore, clickhouse_url: str
):
    """The sink's ClickHouse goes away (its client closed), comes back, and the sink catches up.

    chDB lets a process close a client and open it again on the same data dir,
    so the outage is real for the sink's client while the session's store stays up
    to watch. Against a server the same test closes and reopens the sink's client.
    """
    kafka = KafkaConnection.from_settings(sink_settings)
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    sinks_store = ClickHouseStore(clickhouse_url)
    sink = Sink(kafka, sinks_store, SinkConfig.from_settings(sink_settings)).start()
    try:
        produce(kafka, sink_settings, histories(tenant, 5))
        wait_until(lambda: counts(store, tenant)["events"] == 20, 60, message="first events written")

        sinks_store.close()  # ClickHouse gone for the sink
        produce(kafka, sink_settings, histories(tenant, 25))
        wait_until(lambda: sink.stats.insert_failures >= 3, 60, message="failing inserts being retried")
        wait_until(lambda: group_lag(kafka, sink_settings) == 100, 60, message="lag of the unwritten events")
        produce(kafka, sink_settings, histories(tenant, 25))
        wait_until(lambda: group_lag(kafka, sink_settings) == 200, 60, message="lag growing")
        assert sink.running and sink.stats.retrying and "closed" in (sink.stats.last_error or "")
        assert counts(store, tenant)["events"] == 20  # nothing written, nothing committed

        sinks_store.open()  # ClickHouse is back
        wait_until(lambda: group_lag(kafka, sink_settings) == 0, 120, message="catch-up after the outage")
        assert not sink.stats.retrying
    finally:
        sink.stop()
        sinks_store.close()
    assert counts(store, tenant) == {
        "events": 220,
        "distinct_events": 220,
        "results": 55,
        "outcomes": 55,
        "counted_events": 220,
    }


@pytest.fixture
def child_env(sink_settings: Settings, clickhouse_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment of a sink child process: its own chDB dir (or the server and a database of its own)."""
    url = f"chdb://{tmp_path / 'child-clickhouse'}" if clickhouse_url.startswith("chdb://") else clickhouse_url
    yield {
        **os.environ,
        "KAFKA_BOOTSTRAP": sink_settings.kafka_bootstrap or "",
        "CLICKHOUSE_URL": url,
        "JOBSTREAM_TOPIC_PREFIX": sink_settings.topic_prefix,
        "JOBSTREAM_SINK_BATCH_MAX_SIZE": "100",
        "JOBSTREAM_SINK_BATCH_MAX_WAIT_MS": "50",
        "JOBSTREAM_DATA_DIR": str(tmp_path),
    }


def child(env: dict[str, str], *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.sink_child", *args],
        env=env,
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=timeout_s,
    )


@needs_kafka
@pytest.mark.parametrize("crash", ["after-intent", "before-commit"])
def test_sink_killed_mid_batch_leaves_no_duplicates_and_loses_nothing(
    crash: str, sink_settings: Settings, child_env: dict[str, str], tmp_path: Path
):
    """SIGKILL before and after the second batch's insert; a restarted sink finishes the job exactly once."""
    tenant = f"sink-{uuid.uuid4().hex[:8]}"
    database = ["--database", f"sink_crash_{uuid.uuid4().hex[:8]}"]
    produce(KafkaConnection.from_settings(sink_settings), sink_settings, histories(tenant, 100))  # 400 events

    report = tmp_path / "crash.json"
    killed = child(child_env, "run", "--crash", crash, "--crash-batch", "2", "--report", str(report), *database)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert orjson.loads(report.read_bytes())["crash"] == crash
    before = orjson.loads(child(child_env, "count", "--tenant", tenant, *database).stdout)
    assert 0 < before["events"] < 400  # the first batch at least is in ClickHouse, not everything

    # Restarted with another batch size, as a restart under other load would cut batches differently.
    finished = child({**child_env, "JOBSTREAM_SINK_BATCH_MAX_SIZE": "150"}, "run", "--min-events", "1", *database)
    assert finished.returncode == 0, finished.stderr[-3000:]
    stats = orjson.loads(finished.stdout.strip().splitlines()[-1])
    assert stats["batches_replayed"] == 1

    after = orjson.loads(child(child_env, "count", "--tenant", tenant, *database).stdout)
    assert after == {
        "events": 400,
        "distinct_events": 400,
        "results": 100,
        "outcomes": 100,
        "timed_outcomes": 100,
        "jobs": 100,
        "jobs_succeeded": 100,
        "counted_events": 400,
        "counted_outcomes": 100,
    }


@needs_kafka
def test_a_job_run_twice_is_counted_once_everywhere_with_the_run_clients_saw(
    sink_settings: Settings, store: ClickHouseStore
):
    """At-least-once re-runs as a worker killed mid-batch leaves them, produced to the real broker: the
    re-run's events reach ClickHouse in later inserts than the first run's, then everything is
    redelivered once more past the insert dedup. Every view, and /v1/stats, still counts each job once
    with the first run's timings — the ones the API reports."""
    tenant = f"rerun-{uuid.uuid4().hex[:8]}"
    start = utcnow() - timedelta(minutes=10)
    runs = [
        run_twice(
            job_history(tenant, start=start + timedelta(seconds=i), queue_s=0.1 * (i + 1), run_s=2.0),
            crashed=i % 3 == 0,
            outcome="failed" if i % 4 == 1 else "succeeded",
        )
        for i in range(12)
    ]
    runs += [(job_history(tenant, start=start, outcome="failed"), [])]  # and one job that ran once
    kafka = KafkaConnection.from_settings(sink_settings)
    sink = Sink(kafka, store, SinkConfig.from_settings(sink_settings)).start()
    try:
        produce(kafka, sink_settings, [e for first, _ in runs for e in first])
        wait_until(lambda: group_lag(kafka, sink_settings) == 0, 60, message="first runs written")
        produce(kafka, sink_settings, [e for _, second in runs for e in second])
        wait_until(lambda: group_lag(kafka, sink_settings) == 0, 60, message="re-runs written")
    finally:
        sink.stop()
    redeliver_everything(sink_settings, store)
    assert counts(store, tenant)["events"] == 2 * sum(len(a) + len(b) for a, b in runs)  # the raw log keeps both

    views = {first[0].job_id: JobView.fold(store.job_events(tenant, first[0].job_id)) for first, _ in runs}
    for (first, second), view in zip(runs, views.values(), strict=False):
        assert view is not None
        first_terminal = next((e for e in first if e.terminal), second[-1] if second else None)
        assert (view.status.value, ms(view.finished_at)) == (first_terminal.type.value, ms(first_terminal.ts))
        assert ms(view.started_at) == ms(first[1].ts)  # the first run's start
    assert_each_job_counted_once(store, tenant, views)  # type: ignore[arg-type]


def redeliver_everything(settings: Settings, store: ClickHouseStore) -> None:
    """Every record of the test's topic inserted again under a new token (a redelivery the insert
    dedup does not catch): rows the views must not count twice."""
    reader = Consumer(
        KafkaConnection.from_settings(settings).consumer_config(
            f"redeliver-{uuid.uuid4().hex}", **{"enable.partition.eof": True}
        )
    )
    topic = settings.topic(topics.EVENTS)
    partitions = reader.list_topics(topic, timeout=30).topics[topic].partitions
    reader.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages: list[Message] = []
    at_end: set[int] = set()
    try:

        def drained() -> bool:
            for m in reader.consume(500, timeout=0.2):
                if m.error() is None:
                    messages.append(m)
                else:
                    at_end.add(m.partition())
            return len(at_end) == len(partitions)

        wait_until(drained, 30, 0, message="the topic read to its end")
    finally:
        reader.close()
    messages.sort(key=lambda m: (m.partition(), m.offset()))
    rows = build_rows(messages, JobTimes(10_000), lambda m: None)
    store.insert_json("job_events", rows.body(store.job_times(rows.missing_times())), uuid.uuid4().hex)
