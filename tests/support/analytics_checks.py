"""One check for every analytics surface: each job counted once, with the timings the API reports.

Shared by the sink's deterministic re-run test and the processors' kill -9 test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import orjson
import pytest

from sink import analytics
from store.clickhouse import ClickHouseStore
from streams.events import JobView

LEVELS = [50, 90, 99]


def ms(ts: datetime | None) -> datetime | None:
    """A time as ClickHouse's DateTime64(3) returns it (naive UTC, milliseconds)."""
    if ts is None:
        return None
    ts = ts.astimezone(UTC).replace(tzinfo=None)
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (ms(b) - ms(a)).total_seconds()  # type: ignore[operator]


def api_timings(view: JobView) -> tuple:
    """(status, submitted, started, finished, queue wait, run, total) as the API reports them."""
    return (
        view.status.value,
        ms(view.submitted_at),
        ms(view.started_at),
        ms(view.finished_at),
        _seconds(view.submitted_at, view.started_at),
        _seconds(view.started_at, view.finished_at),
        _seconds(view.submitted_at, view.finished_at),
    )


def assert_same(got: tuple, want: tuple, job_id: str) -> None:
    """Times exactly (to the millisecond), durations to float precision."""
    assert len(got) == len(want), job_id
    for g, w in zip(got, want, strict=False):
        assert g == (pytest.approx(w) if isinstance(w, float) else w), (job_id, got, want)


def assert_each_job_counted_once(store: ClickHouseStore, tenant: str, views: dict[str, JobView]) -> None:
    """Every view an analyst is told to query, and the /v1/stats headline, against the API's ``views``
    (job id → the JobView that ``GET /v1/jobs/{id}`` answers) of ALL the tenant's jobs."""
    t = {"t": tenant}
    q = lambda sql: store.query(sql, t)  # noqa: E731
    jobs = len(views)
    want = {job_id: api_timings(view) for job_id, view in views.items()}
    succeeded = {j for j, v in views.items() if v.status.value == "succeeded"}

    outcomes = q(
        "SELECT job_id, status, submitted_at, started_at, finished_at, queue_wait_s, run_s, total_s "
        "FROM job_outcomes WHERE tenant = {t:String}"
    )
    assert len(outcomes) == jobs, "job_outcomes: one row per job"
    for job_id, *got in outcomes:
        assert_same(tuple(got), want[job_id], job_id)

    results = q(
        "SELECT job_id, calc_version, result, submitted_at, started_at, finished_at, queue_wait_s, run_s, "
        "total_s FROM job_results WHERE tenant = {t:String}"
    )
    assert len(results) == len(succeeded), "job_results: one row per succeeded job, without FINAL"
    for job_id, calc_version, result, *timings in results:
        view = views[job_id]
        assert calc_version == view.calc_version and orjson.loads(result) == view.result, job_id
        assert_same(tuple(timings), want[job_id][1:], job_id)

    state = q("SELECT job_id, status, submitted_at, started_at, finished_at FROM jobs WHERE tenant = {t:String}")
    assert {row[0]: tuple(row[1:]) for row in state} == {j: w[:4] for j, w in want.items()}

    statuses = [v.status.value for v in views.values()]
    assert q("SELECT sum(jobs) FROM outcome_stats WHERE tenant = {t:String}") == [(jobs,)]
    assert q("SELECT sum(finished), sum(failed) FROM failure_rates WHERE tenant = {t:String}") == [
        (jobs, statuses.count("failed"))
    ]
    assert q("SELECT sum(jobs) FROM batch_sizes WHERE tenant = {t:String}") == [(jobs,)]
    counted = dict(q("SELECT type, sum(events) FROM event_counts WHERE tenant = {t:String} GROUP BY type"))
    assert counted["queued"] == counted["running"] == jobs
    assert sum(counted.get(s, 0) for s in ("succeeded", "failed", "cancelled")) == jobs

    stats = analytics.headline(store, tenant, min(v.submitted_at for v in views.values()) - timedelta(minutes=1))
    assert (stats["submitted"], stats["finished"], stats["succeeded"], stats["failed"]) == (
        jobs,
        jobs,
        len(succeeded),
        statuses.count("failed"),
    )
    for name, index in (("queue_wait", 4), ("run", 5), ("end_to_end", 6)):
        values = [w[index] for w in want.values()]
        assert stats["latency_s"][name] == pytest.approx(
            dict(zip(["p50", "p90", "p99"], np.percentile(values, LEVELS), strict=False))
        ), name
