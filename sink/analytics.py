"""Headline analytics for ``GET /v1/stats``: merged from the per-minute rollups.

The rollups (``outcome_stats_state``, ``event_counts_state``,
``batch_sizes_state``) are maintained by materialized views, so a window of any
length costs one small merge per table instead of a scan of ``job_events``.
Windows start on a whole minute (the rollups' grain).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from sink.schema import QUANTILES
from sink.store import ClickHouseStore

_LEVELS = ("p50", "p90", "p99")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class BadWindow(ValueError):
    """``since`` is neither a duration like ``15m`` nor an ISO 8601 time."""


def parse_since(value: str | None, now: datetime, default: str = "1h") -> datetime:
    """``15m`` / ``1h`` / ``7d`` (before ``now``) or an ISO 8601 time (UTC if no zone given)."""
    text = (value or default).strip()
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match.group(1)) * _UNIT_S[match.group(2)])
    try:
        since = datetime.fromisoformat(text)
    except ValueError:
        raise BadWindow(f"since={text!r}: use a duration (30s, 15m, 1h, 7d, 2w) or an ISO 8601 time") from None
    return since if since.tzinfo else since.replace(tzinfo=timezone.utc)


def headline(store: ClickHouseStore, tenant: str, since: datetime, kind: str | None = None,
             now: datetime | None = None) -> dict[str, Any]:
    """Throughput, outcome counts, failure rate, latency and batch-size quantiles of one tenant."""
    now = now or datetime.now(timezone.utc)
    start = since.astimezone(timezone.utc).replace(second=0, microsecond=0)
    where = "tenant = {tenant:String} AND minute >= {start:DateTime('UTC')}"
    params: dict[str, Any] = {"tenant": tenant, "start": start.replace(tzinfo=None)}
    if kind is not None:
        where += " AND kind = {kind:String}"
        params["kind"] = kind

    counts = dict(store.query(f"SELECT status, sum(jobs) FROM outcome_stats_state WHERE {where} GROUP BY status",
                              params))
    ((queue_wait, run, total),) = store.query(
        f"SELECT quantilesMerge({QUANTILES})(queue_wait_s), quantilesMerge({QUANTILES})(run_s), "
        f"quantilesMerge({QUANTILES})(total_s) FROM outcome_stats_state WHERE {where}", params)
    ((submitted,),) = store.query(
        f"SELECT sum(events) FROM event_counts_state WHERE {where} AND type = 'queued'", params)
    ((size_avg, size_q, size_max, sized_jobs),) = store.query(
        f"SELECT avgMerge(size_avg), quantilesMerge({QUANTILES})(size_quantiles), max(size_max), sum(jobs) "
        f"FROM batch_sizes_state WHERE {where}", params)

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
        "throughput_per_s": finished / window_s,
        "failure_rate": counts.get("failed", 0) / finished if finished else None,
        "latency_s": {"queue_wait": _levels(queue_wait), "run": _levels(run), "end_to_end": _levels(total)},
        "batch_size": {"avg": _number(size_avg) if sized_jobs else None, **_levels(size_q if sized_jobs else None),
                       "max": int(size_max) if sized_jobs else None},
    }


def _levels(values: list[float] | None) -> dict[str, float | None]:
    values = values or [math.nan] * len(_LEVELS)
    return {name: _number(v) for name, v in zip(_LEVELS, values)}


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value
