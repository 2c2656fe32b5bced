"""``GET /v1/jobs``: a tenant's jobs, newest first, with an opaque cursor.

Reads the ``jobs`` view (the latest state per job, kept by a materialized view,
so a page does not re-fold every event of the tenant). The cursor is the
(submitted_at, job_id) of the last row of the page, so pages stay stable while
new jobs arrive.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import orjson

from store.clickhouse import ClickHouseStore
from streams.errors import JobstreamError
from streams.events import JobStatus


class BadCursor(JobstreamError, ValueError):
    """The cursor was not made by this API."""


def encode_cursor(submitted_at: datetime, job_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([submitted_at.isoformat(), job_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (submitted_at, job_id) a cursor holds; BadCursor for anything ``encode_cursor`` cannot have
    made (including a time ClickHouse's DateTime64 cannot hold, which would fail the query)."""
    try:
        ts, job_id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        submitted = datetime.fromisoformat(ts)
    except Exception:
        raise BadCursor(cursor) from None
    if not isinstance(job_id, str) or not 1970 <= submitted.year <= 2200:
        raise BadCursor(cursor)
    return submitted, job_id


def list_jobs(
    store: ClickHouseStore,
    tenant: str,
    *,
    status: JobStatus | None,
    kind: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of jobs and the cursor of the next page (None when this was the last)."""
    where = ["tenant = {tenant:String}"]
    params: dict[str, Any] = {"tenant": tenant, "limit": limit + 1}
    if status is not None:
        where.append("status = {status:String}")
        params["status"] = status.value
    if kind is not None:
        where.append("kind = {kind:String}")
        params["kind"] = kind
    if since is not None:
        where.append("submitted >= {since:DateTime64(3, 'UTC')}")
        params["since"] = since
    if until is not None:
        where.append("submitted < {until:DateTime64(3, 'UTC')}")
        params["until"] = until
    if cursor is not None:
        cursor_ts, cursor_id = decode_cursor(cursor)
        where.append("(submitted, job_id) < ({cts:DateTime64(3, 'UTC')}, {cid:String})")
        params.update(cts=cursor_ts, cid=cursor_id)
    # A job whose queued event is gone (retention) still lists, at its first known update.
    rows = store.query(
        "SELECT job_id, kind, submitted, updated_at, status FROM "
        "(SELECT job_id, kind, ifNull(submitted_at, updated_at) AS submitted, updated_at, status, tenant FROM jobs) "
        f"WHERE {' AND '.join(where)} ORDER BY submitted DESC, job_id DESC LIMIT {{limit:UInt32}}",
        params,
    )
    page = [
        {
            "job_id": job_id,
            "kind": kind,
            "status": status_,
            "submitted_at": _utc(submitted),
            "updated_at": _utc(updated),
        }
        for job_id, kind, submitted, updated, status_ in rows[:limit]
    ]
    next_cursor = encode_cursor(page[-1]["submitted_at"], page[-1]["job_id"]) if len(rows) > limit else None
    return page, next_cursor


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
