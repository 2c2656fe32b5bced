"""Schema, analytics and SQL for analysts, against the session's ClickHouse (chDB or CLICKHOUSE_URL's server).

Migrations and TTL run in databases of their own; the rest use a tenant of their own.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError
from confluent_kafka import Message
from pydantic import SecretStr

from bench.histories import job_history
from jobstream.server import create_app
from sink import analytics
from sink.query import render
from sink.rows import JobTimes, build_rows
from store import schema
from store.clickhouse import EVENT_COLUMNS, ClickHouseStore, QueryLimits, QueryResult, connect
from store.sql_guard import Refused
from streams.events import EventType, JobEvent, JobView, utcnow
from streams.settings import Settings
from streams.wire import dumps
from tests.support import ROOT
from tests.support.readme import readme_queries
from tests.support.reruns import run_twice
from tests.support.servers import Server
from tests.support.waiting import wait_until

ADMIN = "analyst-key-0123456789"
ALICE = "alice-key-0123456789x"


def write(store: ClickHouseStore, events: list[JobEvent]) -> None:
    """What the sink writes for these events (same row building, one token per call)."""
    rows = build_rows(
        [Message(topic="t", partition=0, offset=i, value=dumps(e)) for i, e in enumerate(events)],
        JobTimes(1000),
        lambda m: None,
    )
    store.insert_json("job_events", rows.body(store.job_times(rows.missing_times())), uuid.uuid4().hex)


@pytest.fixture
def database(clickhouse_url: str) -> Iterator[str]:
    name = f"jobstream_test_{uuid.uuid4().hex[:8]}"
    yield name
    admin = connect(clickhouse_url)
    admin.command(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


def one(store_or_client, sql: str, params: dict | None = None):  # type: ignore[no-untyped-def]
    if isinstance(store_or_client, ClickHouseStore):
        return store_or_client.query(sql, params)[0][0]
    return store_or_client.query(sql, parameters=params or {}).result_rows[0][0]


# --- schema -------------------------------------------------------------------------------------
def test_migrations_run_once_and_upgrade_version_1_data_with_a_backfill(clickhouse_url: str, database: str):
    admin = connect(clickhouse_url)
    admin.command(f"CREATE DATABASE `{database}`")
    admin.close()
    client = connect(clickhouse_url, database)
    try:
        assert schema.migrate(client, target=1) == [1]
        # Version 1 data: events only (no state, outcomes or rollups yet).
        events = job_history("old", queue_s=2.0, run_s=3.0) + job_history("old", outcome="failed")
        client.insert(
            "job_events",
            [
                [e.tenant, e.job_id, e.seq, e.type.value, e.kind, e.ts, orjson.dumps(e.data).decode(), 1, 0, i]
                for i, e in enumerate(events)
            ],
            column_names=EVENT_COLUMNS,
        )

        assert schema.migrate(client) == [v for v, _, _ in schema.MIGRATIONS if v > 1]
        assert schema.migrate(client) == []  # a restart applies nothing
        assert sorted(schema.applied_versions(client)) == [v for v, _, _ in schema.MIGRATIONS]
        assert one(client, "SELECT count() FROM schema_migrations") == len(schema.MIGRATIONS)

        state = client.query("SELECT status, queue_wait_s, run_s, total_s FROM jobs ORDER BY status").result_rows
        assert state == [("failed", 1.0, 2.0, 3.0), ("succeeded", 2.0, 3.0, 5.0)]
        outcomes = client.query("SELECT status, error_type, total_s FROM job_outcomes ORDER BY status").result_rows
        assert outcomes == [("failed", "calculation_error", 3.0), ("succeeded", "", 5.0)]
        assert one(client, "SELECT sum(events) FROM event_counts") == 8
        assert one(client, "SELECT sum(jobs) FROM outcome_stats") == 2
        assert one(client, "SELECT sum(jobs) FROM batch_sizes") == 2
    finally:
        client.close()


def test_version_3_data_with_a_job_run_twice_migrates_to_one_row_per_job(clickhouse_url: str, database: str):
    """A data dir of version 3 (outcomes and results as tables, both runs in them) upgrades: the views
    that take their names hold one row per job, the first run's, also for jobs whose events are gone."""
    admin = connect(clickhouse_url)
    admin.command(f"CREATE DATABASE `{database}`")
    admin.close()
    client = connect(clickhouse_url, database)
    try:
        assert schema.migrate(client, target=3) == [1, 2, 3]
        first, second = run_twice(job_history("v3", queue_s=1.0, run_s=2.0), crashed=False)
        gone = job_history("v3", queue_s=4.0)  # its events will be removed (retention) before the upgrade
        times = JobTimes(100)  # what the sink saw, across its batches
        for offset, e in enumerate([*first, *second, *gone]):
            rows = build_rows([Message(topic="t", partition=0, offset=offset, value=dumps(e))], times, lambda m: None)
            client.raw_insert(
                "job_events",
                insert_block=rows.body({}),
                fmt="JSONEachRow",
                settings={"input_format_json_read_objects_as_strings": 1, "date_time_input_format": "best_effort"},
            )
        assert one(client, "SELECT count() FROM job_outcomes") == 3  # version 3 counts the re-run
        client.command(
            "ALTER TABLE job_events DELETE WHERE job_id = {j:String}",
            parameters={"j": gone[0].job_id},
            settings={"mutations_sync": 2},
        )

        assert schema.migrate(client) == list(range(4, schema.LATEST + 1))
        rows = client.query("SELECT job_id, queue_wait_s, run_s FROM job_outcomes ORDER BY queue_wait_s").result_rows
        assert rows == [(first[0].job_id, 1.0, 2.0), (gone[0].job_id, 4.0, 2.0)]
        results = client.query("SELECT job_id, result FROM job_results ORDER BY job_id").result_rows
        assert sorted(results) == sorted(
            [
                (first[0].job_id, orjson.dumps(first[-1].data["result"]).decode()),
                (gone[0].job_id, orjson.dumps(gone[-1].data["result"]).decode()),
            ]
        )
        assert one(client, "SELECT sum(jobs) FROM outcome_stats") == 2
    finally:
        client.close()


def test_events_ttl_is_a_setting_applied_idempotently_at_start(clickhouse_url: str, database: str):
    store = ClickHouseStore(clickhouse_url, database=database)
    try:
        old = job_history("ttl", start=utcnow() - timedelta(days=30))
        recent = job_history("ttl")
        write(store, old + recent)
        assert store.apply_events_ttl(0) is None  # no TTL yet, none wanted: nothing to do
        assert store.apply_events_ttl(7) == "7 days"
        assert store.apply_events_ttl(7) is None  # same value at the next start: no ALTER
        store.query("OPTIMIZE TABLE job_events FINAL")  # merges apply the TTL
        assert one(store, "SELECT count() FROM job_events") == 4  # the 30-day-old job is gone
        assert one(store, "SELECT uniqExact(job_id) FROM job_events") == 1
        assert store.apply_events_ttl(14) == "14 days"
        assert store.apply_events_ttl(0) == "removed"
        assert store.apply_events_ttl(0) is None
        with pytest.raises(ValueError):
            store.apply_events_ttl(-1)
    finally:
        store.close()


def test_a_retried_batch_completes_views_a_first_attempt_missed_and_doubles_nothing(clickhouse_url: str, database: str):
    """The partly-written insert (a crash inside ClickHouse's insert): the table and some views got the
    block, others not. The retry with the same token writes only what is missing, everywhere."""
    store = ClickHouseStore(clickhouse_url, database=database)
    try:
        events = [e for _ in range(3) for e in job_history("partial")]
        rows = build_rows(
            [Message(topic="t", partition=0, offset=i, value=dumps(e)) for i, e in enumerate(events)],
            JobTimes(100),
            lambda m: None,
        )
        body = rows.body({})
        store.query("DETACH TABLE job_outcomes_store_mv")  # this view misses the first attempt...
        store.insert_json("job_events", body, "jobs.events/0:0-11")
        assert one(store, "SELECT count() FROM job_outcomes") == one(store, "SELECT count() FROM job_results") == 0
        assert one(store, "SELECT count() FROM jobs WHERE status = 'succeeded'") == 3  # ...this one does not
        store.query("ATTACH TABLE job_outcomes_store_mv")
        for _ in range(2):  # ...the retry, and a redelivery after it
            store.insert_json("job_events", body, "jobs.events/0:0-11")
        assert [
            one(store, f"SELECT count() FROM {table}") for table in ("job_events", "job_results", "job_outcomes")
        ] == [12, 3, 3]
        assert one(store, "SELECT sum(jobs) FROM outcome_stats") == 3  # the view's own view caught up too
        assert one(store, "SELECT sum(events) FROM event_counts") == 12
        assert one(store, "SELECT count() FROM jobs WHERE status = 'succeeded'") == 3
    finally:
        store.close()


def test_jobs_view_gives_the_latest_state_without_final(store: ClickHouseStore):
    """Each event in its own insert (its own part, unmerged): the view still folds them like JobView."""
    tenant = f"state-{uuid.uuid4().hex[:8]}"
    events = job_history(tenant, outcome="cancelled", attempt=2)
    late = events[-1].model_copy(
        update={
            "seq": 4,
            "type": EventType.SUCCEEDED,
            "ts": events[-1].ts + timedelta(1),
            "data": {"result": 1, "calc_version": "1", "attempt": 2},
        }
    )
    for event in [*events, late][::-1]:  # even out of order
        write(store, [event])
    ((status, progress, attempts, last_seq, error_type, submitted, started, finished),) = store.query(
        "SELECT status, progress, attempts, last_seq, error_type, submitted_at, started_at, finished_at FROM jobs "
        "WHERE tenant = {t:String} AND job_id = {j:String}",
        {"t": tenant, "j": events[0].job_id},
    )
    folded = JobView.fold([*events, late])
    assert folded is not None
    assert status == folded.status.value == "cancelled"  # the first terminal event wins
    assert (progress, attempts, last_seq, error_type) == (0.5, 2, 4, "cancelled")
    ms = lambda t: t.replace(tzinfo=None, microsecond=t.microsecond // 1000 * 1000)  # noqa: E731
    assert (submitted, started, finished) == (ms(events[0].ts), ms(events[1].ts), ms(events[3].ts))


def test_rollups_and_the_stats_headline_match_numpy(store: ClickHouseStore):
    tenant = f"stats-{uuid.uuid4().hex[:8]}"
    start = utcnow() - timedelta(minutes=20)
    queue_waits = [0.5 * i for i in range(1, 11)]
    events = [
        e
        for i, q in enumerate(queue_waits)
        for e in job_history(tenant, start=start + timedelta(minutes=i), queue_s=q, run_s=2.0, batch_size=4)
    ]
    events += [
        e
        for _ in range(2)
        for e in job_history(tenant, outcome="failed", start=start, queue_s=1.0, run_s=0.5, batch_size=16)
    ]
    events += job_history(tenant, kind="linear.fit", start=start, queue_s=9.0, run_s=9.0, batch_size=1)
    write(store, events)

    stats = analytics.headline(store, tenant, utcnow() - timedelta(hours=1), kind="stats.describe")
    assert (stats["submitted"], stats["finished"], stats["succeeded"], stats["failed"]) == (12, 12, 10, 2)
    assert stats["failure_rate"] == pytest.approx(2 / 12)
    assert stats["throughput_per_s"] == pytest.approx(12 / stats["window_s"])
    waits = np.array(queue_waits + [1.0, 1.0])
    assert stats["latency_s"]["queue_wait"] == pytest.approx(
        dict(zip(["p50", "p90", "p99"], np.percentile(waits, [50, 90, 99]), strict=False))
    )
    assert stats["latency_s"]["end_to_end"]["p50"] == pytest.approx(
        np.percentile(waits + np.array([2.0] * 10 + [0.5] * 2), 50)
    )
    sizes = np.array([4] * 10 + [16] * 2)
    assert stats["batch_size"] == pytest.approx(
        {"avg": sizes.mean(), "p50": 4.0, "p90": np.percentile(sizes, 90), "p99": np.percentile(sizes, 99), "max": 16}
    )

    everything = analytics.headline(store, tenant, utcnow() - timedelta(hours=1))
    assert everything["finished"] == 13 and everything["latency_s"]["run"]["p99"] > 2.0
    later = analytics.headline(store, tenant, utcnow() - timedelta(minutes=5))
    assert later["finished"] == 0 and later["failure_rate"] is None and later["latency_s"]["run"]["p50"] is None

    per_minute = store.query(
        "SELECT sum(events) FROM event_counts WHERE tenant = {t:String} AND type = 'queued'", {"t": tenant}
    )
    assert per_minute == [(13,)]
    rates = store.query(
        "SELECT sum(finished), sum(failed) FROM failure_rates WHERE tenant = {t:String} AND kind = 'stats.describe'",
        {"t": tenant},
    )
    assert rates == [(12, 2)]


def test_parse_since_takes_durations_and_times():
    now = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)
    assert analytics.parse_since("15m", now) == now - timedelta(minutes=15)
    assert analytics.parse_since(None, now) == now - timedelta(hours=1)
    assert analytics.parse_since("2026-01-01T00:00:00", now) == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(analytics.BadWindow):
        analytics.parse_since("yesterday", now)


@pytest.mark.parametrize(
    "since",
    [
        "99999999d",
        "9" * 30 + "d",
        "1" * 400 + "s",
        "0001-01-01",
        "1969-12-31T23:59:59Z",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59-14:00",
    ],
)
def test_parse_since_refuses_windows_out_of_range(since: str):
    with pytest.raises(analytics.BadWindow) as refused:
        analytics.parse_since(since, utcnow())
    assert len(str(refused.value)) < 120  # the value is cut, never echoed in full


def test_the_readmes_example_queries_run_read_only(store: ClickHouseStore):
    start = utcnow() - timedelta(minutes=10)
    write(
        store, [e for outcome in ("succeeded", "failed") for e in job_history("readme", outcome=outcome, start=start)]
    )
    queries = readme_queries()
    assert len(queries) >= 9
    for sql in queries:
        result = store.readonly_query(sql)
        assert result.columns, sql


# --- read-only SQL ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO job_events (tenant, job_id) VALUES ('x', 'y')",
        "DROP TABLE job_results",
        "TRUNCATE TABLE job_events",
        "CREATE TABLE evil (a UInt8) ENGINE = Memory",
        "ALTER TABLE job_events DELETE WHERE 1",
        "SELECT count() FROM job_events SETTINGS readonly = 0",
        "SELECT count() FROM job_events SETTINGS max_result_rows = 0",
        "SET readonly = 0",
        "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    ],
)
def test_clickhouse_itself_refuses_anything_but_reading(store: ClickHouseStore, sql: str):
    """The sandbox refuses these first (tests/test_sql_sandbox.py); ClickHouse's session is the second line."""
    with pytest.raises(Refused):
        store.readonly_query(sql)
    second_line = connect(store.url, store.database, settings=QueryLimits().settings())
    try:
        with pytest.raises(DatabaseError) as refused:
            second_line.query(sql)
    finally:
        second_line.close()
    assert refused.value.code == 164, str(refused.value)  # READONLY
    assert store.query("EXISTS TABLE job_results") == [(1,)]


def test_query_limits_are_enforced_by_clickhouse(store: ClickHouseStore):
    tight = QueryLimits(max_rows=5, max_bytes=1 << 20, max_seconds=1.0)
    assert store.readonly_query("SELECT number FROM numbers(5)", tight).rows == [(0,), (1,), (2,), (3,), (4,)]
    with pytest.raises(DatabaseError) as too_many:
        store.readonly_query("SELECT number FROM numbers(6)", tight)
    assert too_many.value.code == 396  # TOO_MANY_ROWS_OR_BYTES
    with pytest.raises(DatabaseError) as too_slow:
        store.readonly_query("SELECT sum(cityHash64(number)) FROM numbers(1000000000000)", tight)
    assert too_slow.value.code == 159  # TIMEOUT_EXCEEDED


def test_results_render_as_table_csv_and_json():
    result = QueryResult(
        ["kind", "n", "at"],
        ["String", "UInt64", "DateTime"],
        [("stats.describe", 3, datetime(2026, 1, 1, 12, 0)), ("a,b", None, None)],
    )
    assert render(result, "csv") == 'kind,n,at\nstats.describe,3,2026-01-01T12:00:00\n"a,b",,'
    assert orjson.loads(render(result, "json")) == [
        {"kind": "stats.describe", "n": 3, "at": "2026-01-01T12:00:00"},
        {"kind": "a,b", "n": None, "at": None},
    ]
    table = render(result, "table")
    assert "stats.describe" in table and "2 rows" in table
    with pytest.raises(ValueError):
        render(result, "xml")


# --- over HTTP (needs the broker: the app's lifespan ensures topics) ----------------------------------
@pytest.fixture(scope="module")
def analysts(stack: str, settings: Settings, store: ClickHouseStore) -> Iterator[Server]:
    """An API on the stack's topics with API keys; only the 'analysts' tenant may run SQL."""
    keyed = settings.model_copy(
        update={"api_keys": SecretStr(f"analysts={ADMIN},alice={ALICE}"), "sql_tenants": "analysts", "sql_max_rows": 50}
    )
    server = Server(create_app(keyed, {"api"}, store=store)).start()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="keyed API ready")
    yield server
    server.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.kafka
def test_sql_endpoint_needs_an_sql_tenant_and_only_reads(analysts: Server, store: ClickHouseStore):
    url = f"{analysts.url}/v1/sql"
    assert httpx.post(url, json={"sql": "SELECT 1"}).status_code == 401
    refused = httpx.post(url, json={"sql": "SELECT 1"}, headers=bearer(ALICE))
    assert refused.status_code == 403 and refused.headers["content-type"] == "application/problem+json"

    ok = httpx.post(url, json={"sql": "SELECT 1 AS one, 'x' AS s, now() AS t"}, headers=bearer(ADMIN))
    assert ok.status_code == 200
    body = ok.json()
    assert body["columns"] == ["one", "s", "t"] and body["types"][0] == "UInt8" and body["rows"][0][:2] == [1, "x"]

    empty = httpx.post(url, json={"sql": "SELECT 1 AS one WHERE 0"}, headers=bearer(ADMIN)).json()
    assert (empty["columns"], empty["rows"]) == (["one"], [])

    before = one(store, "SELECT count() FROM job_events")
    write_attempt = httpx.post(
        url, json={"sql": "INSERT INTO job_events (tenant, job_id) VALUES ('x', 'y')"}, headers=bearer(ADMIN)
    )
    assert write_attempt.status_code == 403 and write_attempt.json()["title"] == "Read-only"
    assert one(store, "SELECT count() FROM job_events") >= before
    assert one(store, "SELECT count() FROM job_events WHERE tenant = 'x' AND job_id = 'y'") == 0

    too_big = httpx.post(url, json={"sql": "SELECT number FROM numbers(51)"}, headers=bearer(ADMIN))
    assert too_big.status_code == 422 and too_big.json()["max_rows"] == 50
    bad = httpx.post(url, json={"sql": "SELEC 1"}, headers=bearer(ADMIN))
    assert bad.status_code == 400 and "Syntax error" in bad.json()["detail"]


@pytest.mark.kafka
def test_stats_show_the_callers_tenant_only(analysts: Server, store: ClickHouseStore):
    start = utcnow() - timedelta(minutes=3)
    write(store, [e for _ in range(3) for e in job_history("alice", start=start, kind="demo.alice")])
    write(store, [e for _ in range(5) for e in job_history("analysts", start=start, kind="demo.alice")])
    alice = httpx.get(
        f"{analysts.url}/v1/stats", params={"since": "10m", "kind": "demo.alice"}, headers=bearer(ALICE)
    ).json()
    assert alice["tenant"] == "alice" and alice["finished"] == 3 and alice["latency_s"]["run"]["p50"] == 2.0
    other = httpx.get(
        f"{analysts.url}/v1/stats", params={"since": "10m", "kind": "demo.alice"}, headers=bearer(ADMIN)
    ).json()
    assert other["finished"] == 5
    assert httpx.get(f"{analysts.url}/v1/stats").status_code == 401
    bad = httpx.get(f"{analysts.url}/v1/stats", params={"since": "soon"}, headers=bearer(ALICE))
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "since"


@pytest.mark.kafka
def test_jobstream_sql_prints_csv_json_and_table_through_the_service(analysts: Server):
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "jobstream.cli", "sql", *args, "--url", analysts.url],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "JOBSTREAM_API_KEY": ADMIN},
        )

    query = "SELECT number AS n, toString(number * 2) AS twice FROM numbers(3)"
    csv_out = cli(query, "--format", "csv")
    assert csv_out.returncode == 0, csv_out.stderr
    assert csv_out.stdout.strip() == "n,twice\n0,0\n1,2\n2,4"
    assert orjson.loads(cli(query, "--format", "json").stdout) == [
        {"n": 0, "twice": "0"},
        {"n": 1, "twice": "2"},
        {"n": 2, "twice": "4"},
    ]
    assert "3 rows" in cli(query).stdout
    refused = cli("DROP TABLE job_events")
    assert refused.returncode == 1 and "Read-only" in refused.stderr


@pytest.mark.kafka
def test_a_real_job_shows_up_in_stats_and_sql(client: httpx.Client):
    job_ids = [
        client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, 3]}}).json()["job_id"]
        for _ in range(3)
    ]
    sql = {"sql": f"SELECT job_id, status, queue_wait_s >= 0, run_s >= 0 FROM jobs WHERE job_id IN {tuple(job_ids)}"}
    rows = wait_until(
        lambda: (
            (r := client.post("/v1/sql", json=sql).json()["rows"])
            and len(r) == 3
            and all(row[1] == "succeeded" for row in r)
            and r
        ),
        90,
        message="jobs succeeded in ClickHouse",
    )
    assert all(row[2:] == [1, 1] for row in rows)
    # job_results is written right after job_events (same batch, next insert); the run time is always known
    # (running and succeeded come from one producer, in order). The API's queued event may land after them, so
    # queue wait and end-to-end can be missing from job_results/job_outcomes, never from `jobs`.
    timed = {"sql": f"SELECT count() FROM job_results WHERE run_s >= 0 AND job_id IN {tuple(job_ids)}"}
    wait_until(lambda: client.post("/v1/sql", json=timed).json()["rows"] == [[3]], 60, message="timed results")
    outcomes = {"sql": f"SELECT count() FROM job_outcomes WHERE job_id IN {tuple(job_ids)}"}
    wait_until(lambda: client.post("/v1/sql", json=outcomes).json()["rows"] == [[3]], 60, message="outcomes")
    stats = client.get("/v1/stats", params={"since": "1h", "kind": "stats.describe"}).json()
    assert stats["finished"] >= 3 and stats["succeeded"] >= 3 and stats["latency_s"]["end_to_end"]["p50"] > 0
    assert stats["batch_size"]["max"] >= 1


BAD_TIMES = [
    "99999999d",
    "9" * 30 + "d",
    "0001-01-01",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59-14:00",
    "9" * 30,
    "soon",
    "",
]


@pytest.mark.kafka
@pytest.mark.parametrize("params", [{"since": v} for v in BAD_TIMES if v] + [{"kind": ""}])
def test_stats_answers_every_bad_since_or_kind_with_a_422_naming_it(client: httpx.Client, params: dict):
    answer = client.get("/v1/stats", params=params)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json", answer.text
    (name,) = params
    assert any(e["field"].endswith(name) for e in answer.json()["errors"]), answer.json()


@pytest.mark.kafka
@pytest.mark.parametrize("name", ["since", "until"])
@pytest.mark.parametrize("value", BAD_TIMES)
def test_job_listing_answers_every_bad_time_with_a_422_naming_it(client: httpx.Client, name: str, value: str):
    answer = client.get("/v1/jobs", params={name: value})
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert any(e["field"].endswith(name) for e in answer.json()["errors"]), answer.json()


@pytest.mark.kafka
def test_stats_oldest_window_and_kind_filter_answer(client: httpx.Client):
    assert client.get("/v1/stats", params={"since": "1970-01-01"}).status_code == 200
    assert client.get("/v1/stats", params={"since": "2w", "kind": "no.such"}).json()["finished"] == 0
