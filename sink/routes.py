"""The read side for analysts over HTTP: ``POST /v1/sql``, ``GET /v1/stats`` and ``/v1/stats/series``.

``/v1/sql`` exists because embedded chDB may be opened by one process only. It shows every
tenant's data, so with API keys only ``JOBSTREAM_SQL_TENANTS`` may use it; ``store.sql_guard``
decides what may run, and errors carry ClickHouse's code and first line only. ``/v1/stats`` is
the caller's own tenant only.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from edge.auth import KeyRing, current_tenant
from edge.problems import Problem, problem_responses
from sink import analytics
from sink.query import limits_from, result_body
from store.clickhouse import ClickHouseStore, StoreClosed
from store.sql_guard import Refused, short_error
from streams.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["analytics"])

# ClickHouse error codes that are the query's fault and have a better answer than 400.
_READONLY, _TIMEOUT, _TOO_BIG = 164, 159, 396


class SqlQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sql: str = Field(
        min_length=1,
        description="One read-only statement (SELECT, SHOW, DESCRIBE, EXPLAIN, …).",
        examples=["SELECT kind, count() FROM jobs GROUP BY kind"],
    )


class SqlResult(BaseModel):
    columns: list[str]
    types: list[str] = Field(description="ClickHouse type of each column.")
    rows: list[list[Any]]
    row_count: int


def sql_tenants(settings: Settings) -> frozenset[str]:
    return frozenset(t.strip() for t in settings.sql_tenants.split(",") if t.strip())


def sql_caller(request: Request, tenant: str = Depends(current_tenant)) -> str:
    """FastAPI dependency: the caller may run SQL over every tenant's data, or 403."""
    keyring: KeyRing = request.app.state.keyring
    settings: Settings = request.app.state.settings
    if keyring.enabled and tenant not in sql_tenants(settings):
        raise Problem(
            403,
            "SQL not allowed",
            f"tenant {tenant!r} may not run SQL; JOBSTREAM_SQL_TENANTS names "
            "the tenants that may (queries see every tenant's data)",
        )
    return tenant


def refusal_status(exc: Refused) -> int:
    """403 for a kind of statement that would write or act on the server, 400 for every other refusal."""
    return 403 if exc.rule == "statement" else 400


@router.post(
    "/v1/sql",
    response_model=SqlResult,
    responses={
        **problem_responses(
            400,
            401,
            403,
            422,
            503,
            s400="Refused by a rule of the sandbox (`rule` names it), or "
            "ClickHouse refused the query (its error code, short message)",
            s403="Not an SQL tenant, or a statement that would write or act on the server",
            s422="Result or run time over the limits",
        ),
    },
)
async def run_sql(body: SqlQuery, request: Request, tenant: str = Depends(sql_caller)) -> Response:
    """Run one read-only SQL statement on ClickHouse and return its rows (``jobstream sql`` uses this)."""
    settings: Settings = request.app.state.settings
    store: ClickHouseStore = request.app.state.store
    limits = limits_from(settings)
    try:
        result = await store.areadonly_query(body.sql, limits)
    except Refused as exc:
        logger.info("sql query by tenant %s refused by rule %s", tenant, exc.rule)
        status = refusal_status(exc)
        title = "Read-only" if status == 403 else "Syntax error" if exc.rule == "syntax" else "Query refused"
        raise Problem(status, title, exc.detail, rule=exc.rule) from None
    except DatabaseError as exc:
        raise _problem(exc, limits) from None
    except (OperationalError, StoreClosed) as exc:
        raise Problem(503, "ClickHouse unavailable", str(exc)) from None
    logger.info("sql query by tenant %s returned %d rows", tenant, len(result.rows))
    return Response(result_body(result), media_type="application/json")


@router.get("/v1/stats", responses={**problem_responses(401, 422, 503)})
async def stats(
    request: Request,
    tenant: str = Depends(current_tenant),
    since: str | None = Query(default=None, description="Window start: 15m, 1h, 7d or ISO 8601 (default 1h)."),
    kind: str | None = Query(default=None, min_length=1, description="Only this calculation."),
) -> dict[str, Any]:
    """Throughput, outcomes, failure rate, latency and batch-size quantiles of the caller's jobs."""
    store: ClickHouseStore = request.app.state.store
    now = datetime.now(UTC)
    try:
        start = analytics.parse_since(since, now)
    except analytics.BadWindow as exc:
        raise Problem(422, "Invalid request", str(exc), errors=[{"field": "since", "reason": str(exc)}]) from None
    if start >= now:
        raise Problem(
            422,
            "Invalid request",
            "since must be in the past",
            errors=[{"field": "since", "reason": "not in the past"}],
        )
    try:
        body = await asyncio.to_thread(analytics.headline, store, tenant, start, kind, now)
    except (OperationalError, StoreClosed) as exc:
        raise Problem(503, "ClickHouse unavailable", str(exc)) from None
    body["admission"] = _admission(request, tenant)
    return body


def _admission(request: Request, tenant: str) -> dict[str, Any] | None:
    """The caller's jobs waiting to start now and its submits throttled by its own limits (429s of this
    API process since it started); None where no API runs in this process."""
    admission = getattr(request.app.state, "admission", None)
    if admission is None:
        return None
    backlog = admission.backlog
    return {
        "waiting": None if backlog is None else backlog.waiting(tenant),
        "start_rate_per_s": None if backlog is None else round(backlog.tenant_rate(tenant), 3),
        "throttled": dict(admission.throttled.get(tenant, {"queue": 0, "rate": 0})),
    }


@router.get("/v1/stats/series", responses={**problem_responses(401, 422, 503)})
async def stats_series(
    request: Request,
    tenant: str = Depends(current_tenant),
    since: str | None = Query(default=None, description="Window start: 15m, 1h, 7d or ISO 8601 (default 1h)."),
    step: str | None = Query(
        default=None, description="Bucket width in whole minutes: 1m, 5m, 1h, or seconds (300); default 1m."
    ),
    kind: str | None = Query(default=None, min_length=1, max_length=256, description="Only this calculation."),
) -> dict[str, Any]:
    """The caller's throughput, failure rate, end-to-end latency and batch-size quantiles per bucket (for charts)."""
    store: ClickHouseStore = request.app.state.store
    settings: Settings = request.app.state.settings
    now = datetime.now(UTC)
    try:
        start = analytics.parse_since(since, now)
    except analytics.BadWindow as exc:
        raise _invalid("since", str(exc)) from None
    if start >= now:
        raise _invalid("since", "since must be in the past")
    try:
        step_s = analytics.parse_step(step)
    except analytics.BadStep as exc:
        raise _invalid("step", str(exc)) from None
    buckets = (now - start).total_seconds() / step_s + 1
    if buckets > settings.stats_series_max_buckets:
        raise _invalid(
            "step",
            f"since/step gives {buckets:.0f} buckets, at most {settings.stats_series_max_buckets} "
            "(JOBSTREAM_STATS_SERIES_MAX_BUCKETS): use a wider step or a shorter window",
        )
    try:
        return await asyncio.to_thread(analytics.series, store, tenant, start, step_s, kind, now)
    except (OperationalError, StoreClosed) as exc:
        raise Problem(503, "ClickHouse unavailable", str(exc)) from None


def _invalid(field: str, reason: str) -> Problem:
    return Problem(422, "Invalid request", reason, errors=[{"field": field, "reason": reason}])


def _problem(exc: DatabaseError, limits) -> Problem:
    """ClickHouse's refusal as a problem: its code and a short first line (no echoed file or URL bodies)."""
    code = getattr(exc, "code", None)
    message = short_error(exc)
    if code == _READONLY:
        return Problem(
            403,
            "Read-only",
            f"only read-only statements may run here: {message}",
            rule="readonly",
            clickhouse_code=code,
        )
    if code == _TOO_BIG:
        return Problem(422, "Result too large", message, max_rows=limits.max_rows, max_bytes=limits.max_bytes)
    if code == _TIMEOUT:
        return Problem(422, "Query too slow", message, max_execution_s=limits.max_seconds)
    return Problem(400, "Query failed", message, clickhouse_code=code)
