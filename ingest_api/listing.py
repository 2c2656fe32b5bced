"""``GET /v1/jobs``: a tenant's jobs, newest first, with an opaque cursor.

The latest state of each job is folded from ``job_events`` in SQL (the last
event by ``seq`` decides the status). The cursor is the (submitted_at, job_id)
of the last row of the page, so pages stay stable while new jobs arrive.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Any

import orjson

from sink.store import ClickHouseStore
from streams.events import JobStatus

_STATUS_SQL = (
    "multiIf(last_type = 'queued', 'queued', last_type IN ('succeeded', 'failed', 'cancelled'), last_type, 'running')"
)


class BadCursor(ValueError):
    """The cursor was not made by this API."""


def encode_cursor(submitted_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([submitted_at.isoformat(), job_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ts, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(ts), str(job_id)
    except Exception:
        raise BadCursor(cursor) from None


def list_jobs(store: ClickHouseStore, tenant: str, *, status: JobStatus | None, kind: str | None,
              since: datetime | None, until: datetime | None, limit: int,
              cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of jobs and the cursor of the next page (None when this was the last)."""
    having = ["1"]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1}
    if status is not None:
        having.append(f"{_STATUS_SQL} = {{status:String}}")
        params["status"] = status.value
    if kind is not None:
        having.append("kind = {kind:String}")
        params["kind"] = kind
    if since is not None:
        having.append("submitted_at >= {since:DateTime64(3, 'UTC')}")
        params["since"] = since
    if until is not None:
        having.append("submitted_at < {until:DateTime64(3, 'UTC')}")
        params["until"] = until
    if cursor is not None:
        cursor_ts, cursor_id = decode_cursor(cursor)
        having.append("(submitted_at, job_id) < ({cts:DateTime64(3, 'UTC')}, {cid:String})")
        params.update(cts=cursor_ts, cid=cursor_id)
    rows = store.query(
        f"SELECT job_id, any(kind) AS kind, min(ts) AS submitted_at, max(ts) AS updated_at, "
        f"argMax(type, seq) AS last_type, {_STATUS_SQL} AS status "
        f"FROM job_events WHERE tenant = {{tenant:String}} GROUP BY job_id "
        f"HAVING {' AND '.join(having)} ORDER BY submitted_at DESC, job_id DESC LIMIT {{limit:UInt32}}",
        params,
    )
    page = [
        {"job_id": job_id, "kind": kind, "status": status_, "submitted_at": _utc(submitted),
         "updated_at": _utc(updated)}
        for job_id, kind, submitted, updated, _, status_ in rows[:limit]
    ]
    next_cursor = encode_cursor(page[-1]["submitted_at"], page[-1]["job_id"]) if len(rows) > limit else None
    return page, next_cursor


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)
