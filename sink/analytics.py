"""Headline analytics for ``GET /v1/stats``: one count per job, with the run its clients saw.

Reads the one-row-per-job sources aggregated on read over the window (``job_outcomes`` for
outcomes and latencies, ``queued`` events for ``submitted``, first ``running`` events for batch
sizes), so a job run twice counts once. Windows start on a whole minute.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from store.clickhouse import ClickHouseStore
from store.schema import FIRST_RUNS_OF_TENANT, QUANTILES
from streams.errors import JobstreamError

_LEVELS = ("p50", "p90", "p99")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# The earliest window start: ClickHouse's DateTime starts at the epoch (DateTime64 at 1900, but
# nothing jobstream stores is older than the epoch), and GET /v1/jobs takes the same range.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)


class BadWindow(JobstreamError, ValueError):
    """``since`` is neither a duration like ``15m`` nor an ISO 8601 time, or reaches before 1970."""


def parse_since(value: str | None, now: datetime, default: str = "1h") -> datetime:
    """``15m`` / ``1h`` / ``7d`` (before ``now``) or an ISO 8601 time (UTC if no zone given).

    Raises ``BadWindow`` for anything else, and for a start before ``EARLIEST`` (however it is
    written: a date, or a duration longer than the time since 1970), so a window never reaches
    ClickHouse out of its range or overflows ``datetime``.
    """
    text = (value or default).strip()
    shown = repr(text if len(text) <= 40 else text[:40] + "…")
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        if not seconds <= (now - EARLIEST).total_seconds():  # also catches inf
            raise BadWindow(f"since={shown} reaches before {EARLIEST.date().isoformat()}")
        return now - timedelta(seconds=seconds)
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise BadWindow(f"since={shown}: use a duration (30s, 15m, 1h, 7d, 2w) or an ISO 8601 time") from None
    try:  # an offset can push the time out of datetime's range
        since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
    except OverflowError:
        raise BadWindow(f"since={shown} is out of range") from None
    if since < EARLIEST:
        raise BadWindow(f"since={shown} is before {EARLIEST.date().isoformat()}")
    return since


def headline(
    store: ClickHouseStore, tenant: str, since: datetime, kind: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Throughput, outcome counts, failure rate, latency and batch-size quantiles of one tenant."""
    now = now or datetime.now(UTC)
    start = since.astimezone(UTC).replace(second=0, microsecond=0)
    where = "tenant = {{tenant:String}} AND {time} >= {{start:DateTime64(3, 'UTC')}}"
    params: dict[str, Any] = {"tenant": tenant, "start": start.replace(tzinfo=None)}
    if kind is not None:
        where += " AND kind = {{kind:String}}"
        params["kind"] = kind

    outcomes = store.query(
        f"SELECT status, count(), countIf(error_type = 'expired') FROM job_outcomes "
        f"WHERE {where.format(time='finished_at')} GROUP BY status",
        params,
    )
    counts = {status: n for status, n, _ in outcomes}
    expired = sum(int(e) for _, _, e in outcomes)
    ((queue_wait, run, total),) = store.query(
        f"SELECT quantiles({QUANTILES})(queue_wait_s), quantiles({QUANTILES})(run_s), "
        f"quantiles({QUANTILES})(total_s) FROM job_outcomes WHERE {where.format(time='finished_at')}",
        params,
    )
    ((submitted,),) = store.query(
        f"SELECT uniqExact(job_id) FROM job_events WHERE type = 'queued' AND {where.format(time='ts')}", params
    )
    ((size_avg, size_q, size_max, sized_jobs),) = store.query(
        f"SELECT avg(batch_size), quantiles({QUANTILES})(batch_size), max(batch_size), count() "
        f"FROM ({FIRST_RUNS_OF_TENANT}) WHERE batch_size > 0 AND {where.format(time='started_at')}",
        params,
    )

    reused = dict(
        store.query(
            f"SELECT how, uniqExact(answer_id) FROM job_reuses WHERE {where.format(time='ts')} GROUP BY how", params
        )
    )
    finished = int(sum(counts.values()))
    window_s = max((now - start).total_seconds(), 1.0)
    return {
        "tenant": tenant,
        "kind": kind,
        "since": start.isoformat(),
        "until": now.isoformat(),
        "window_s": round(window_s, 3),
        "submitted": int(submitted or 0),
        "finished": finished,
        "succeeded": int(counts.get("succeeded", 0)),
        "failed": int(counts.get("failed", 0)),
        "cancelled": int(counts.get("cancelled", 0)),
        "expired": expired,  # of the failed: not started within their start_within_s
        # requests answered by an earlier job (reuse): no job of their own, no result row
        "reused": int(sum(reused.values())),
        "reused_by": {"hit": int(reused.get("hit", 0)), "join": int(reused.get("join", 0))},
        "throughput_per_s": finished / window_s,
        "failure_rate": counts.get("failed", 0) / finished if finished else None,
        "latency_s": {"queue_wait": _levels(queue_wait), "run": _levels(run), "end_to_end": _levels(total)},
        "batch_size": {
            "avg": _number(size_avg) if sized_jobs else None,
            **_levels(size_q if sized_jobs else None),
            "max": int(size_max) if sized_jobs else None,
        },
    }


def _levels(values: list[float] | None) -> dict[str, float | None]:
    values = values or [math.nan] * len(_LEVELS)
    return {name: _number(v) for name, v in zip(_LEVELS, values, strict=False)}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


class BadStep(JobstreamError, ValueError):
    """``step`` is not a whole number of minutes between one minute and one day."""


_STEP = re.compile(r"^(\d{1,6})\s*([smhd]?)$", re.ASCII)


def parse_step(value: str | None, default: str = "1m") -> int:
    """``1m``, ``5m``, ``1h`` or plain seconds (``300``) → seconds: a whole number of minutes, 1 min to 1 day."""
    text = (value or default).strip()
    shown = repr(text if len(text) <= 40 else text[:40] + "…")
    match = _STEP.match(text)
    if not match:
        raise BadStep(f"step={shown}: use a duration in whole minutes (1m, 5m, 1h) or seconds (60, 300)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    if seconds % 60 or not 60 <= seconds <= 86400:
        raise BadStep(f"step={shown}: a whole number of minutes between 1m and 1d")
    return seconds


def series(
    store: ClickHouseStore,
    tenant: str,
    since: datetime,
    step_s: int,
    kind: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One tenant's throughput, outcomes, failure rate, end-to-end latency and batch-size quantiles per bucket.

    Read from the same one-row-per-job sources the per-minute rollups (``outcome_stats``,
    ``failure_rates``, ``batch_sizes``) aggregate, grouped by ``step_s`` buckets: quantiles are
    computed per bucket, not merged from minutes. Columns (``t`` = bucket start, epoch seconds),
    one value per bucket from the first bucket at or before ``since`` to the one holding ``now``,
    empty buckets included, so a chart needs no gap filling.
    """
    now = now or datetime.now(UTC)
    first = int(since.timestamp()) // step_s * step_s
    last = int(now.timestamp()) // step_s * step_s
    times = list(range(first, last + 1, step_s))
    where = "tenant = {{tenant:String}} AND {time} >= {{start:DateTime64(3, 'UTC')}}"
    params: dict[str, Any] = {
        "tenant": tenant,
        "start": datetime.fromtimestamp(first, UTC).replace(tzinfo=None),
        "step": step_s,
    }
    if kind is not None:
        where += " AND kind = {{kind:String}}"
        params["kind"] = kind

    def bucket(column: str) -> str:
        return f"toUnixTimestamp(toStartOfInterval(toDateTime({column}, 'UTC'), toIntervalSecond({{step:UInt32}})))"

    outcomes = {
        row[0]: row[1:]
        for row in store.query(
            f"SELECT {bucket('finished_at')} AS t, count(), countIf(status = 'succeeded'), "
            f"countIf(status = 'failed'), countIf(status = 'cancelled'), quantiles({QUANTILES})(total_s) "
            f"FROM job_outcomes WHERE {where.format(time='finished_at')} GROUP BY t",
            params,
        )
    }
    submitted = dict(
        store.query(
            f"SELECT {bucket('ts')} AS t, uniqExact(job_id) FROM job_events "
            f"WHERE type = 'queued' AND {where.format(time='ts')} GROUP BY t",
            params,
        )
    )
    sizes = {
        row[0]: row[1:]
        for row in store.query(
            f"SELECT {bucket('started_at')} AS t, avg(batch_size), quantiles({QUANTILES})(batch_size), "
            f"max(batch_size) FROM ({FIRST_RUNS_OF_TENANT}) WHERE batch_size > 0 AND "
            f"{where.format(time='started_at')} GROUP BY t",
            params,
        )
    }
    empty = (0, 0, 0, 0, None)
    rows = [outcomes.get(t, empty) for t in times]
    latency = [_levels(r[4]) for r in rows]
    size_rows = [sizes.get(t) for t in times]
    size_levels = [_levels(s[1] if s else None) for s in size_rows]
    return {
        "tenant": tenant,
        "kind": kind,
        "since": datetime.fromtimestamp(first, UTC).isoformat(),
        "until": now.isoformat(),
        "step_s": step_s,
        "t": times,
        "submitted": [int(submitted.get(t, 0)) for t in times],
        "finished": [int(r[0]) for r in rows],
        "succeeded": [int(r[1]) for r in rows],
        "failed": [int(r[2]) for r in rows],
        "cancelled": [int(r[3]) for r in rows],
        "throughput_per_s": [r[0] / step_s for r in rows],
        "failure_rate": [r[2] / r[0] if r[0] else None for r in rows],
        "latency_s": {level: [values[level] for values in latency] for level in _LEVELS},
        "batch_size": {
            "avg": [_number(s[0]) if s else None for s in size_rows],
            **{level: [values[level] for values in size_levels] for level in _LEVELS},
            "max": [int(s[2]) if s else None for s in size_rows],
        },
    }
