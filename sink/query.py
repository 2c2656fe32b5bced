"""SQL for analysts: run a read-only query and print its result as a table, CSV or JSON.

Two ways to reach ClickHouse, chosen by ``jobstream sql``: straight to a
server (``CLICKHOUSE_URL=http(s)://…``, as ``JOBSTREAM_SQL_CLICKHOUSE_USER`` when
set), or — with embedded chDB, which only the running service's process may
open — through that service's ``POST /v1/sql``. Either way ``store.sql_guard``
vets the statement first, then it runs on a ``readonly=1`` session with
result-size and time limits that ClickHouse enforces.
"""

from __future__ import annotations

import csv
import io
import math
import ssl
from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import TYPE_CHECKING, Any
from uuid import UUID

import httpx
import orjson

from store import sql_guard
from store.clickhouse import AnalystLogin, QueryLimits, QueryResult, ServerAccess, connect
from streams.errors import JobstreamError

if TYPE_CHECKING:
    from streams.settings import Settings

FORMATS = ("table", "csv", "json")


class QueryFailed(JobstreamError, RuntimeError):
    """The query was refused or failed; the message says why (ClickHouse's words where it spoke)."""


def run_direct(
    url: str,
    sql: str,
    limits: QueryLimits,
    database: str | None = None,
    login: AnalystLogin | None = None,
    access: ServerAccess | None = None,
) -> QueryResult:
    """Run on a ClickHouse server: vetted by ``sql_guard``, then on a read-only session of its own, as ``login``."""
    if url.startswith("chdb://"):
        raise ValueError("embedded chDB belongs to the running service: ask it (POST /v1/sql) instead")
    parser = connect(url, database, login=login, access=access)
    client = connect(url, database, settings=limits.settings(), login=login, access=access)
    try:
        checked = sql_guard.vet(parser, sql)
        result = client.query(checked)
        return QueryResult(list(result.column_names), [t.name for t in result.column_types], list(result.result_rows))
    except sql_guard.Refused as exc:
        raise QueryFailed(f"refused ({exc.rule}): {exc.detail}") from None
    except Exception as exc:
        raise QueryFailed(sql_guard.short_error(exc)) from None
    finally:
        parser.close()
        client.close()


def analyst_login(settings: Settings) -> AnalystLogin | None:
    """The ClickHouse user for analysts' SQL (``JOBSTREAM_SQL_CLICKHOUSE_USER``/``_PASSWORD``), if set."""
    if not settings.sql_clickhouse_user:
        return None
    if settings.clickhouse_url.startswith("chdb://"):
        raise ValueError(
            "JOBSTREAM_SQL_CLICKHOUSE_USER needs a ClickHouse server (CLICKHOUSE_URL=http…); embedded chDB has no users"
        )
    password = settings.sql_clickhouse_password.get_secret_value() if settings.sql_clickhouse_password else ""
    return AnalystLogin(settings.sql_clickhouse_user, password)


def run_remote(
    base_url: str,
    sql: str,
    api_key: str | None = None,
    timeout_s: float = 120.0,
    verify: ssl.SSLContext | bool = True,
) -> QueryResult:
    """Run through a jobstream service's ``POST /v1/sql`` (``verify``: how an https:// service is checked)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(
            f"{base_url.rstrip('/')}/v1/sql", json={"sql": sql}, headers=headers, timeout=timeout_s, verify=verify
        )
    except httpx.TransportError as exc:
        raise QueryFailed(
            f"cannot reach the jobstream service at {base_url} ({exc}); is `jobstream up` running?"
        ) from exc
    if response.status_code != 200:
        try:
            problem = response.json()
            message = f"{problem.get('title', response.reason_phrase)}: {problem.get('detail', '')}".rstrip(": ")
        except ValueError:
            message = response.text[:500]
        raise QueryFailed(f"HTTP {response.status_code} {message}")
    body = response.json()
    return QueryResult(body["columns"], body["types"], [tuple(row) for row in body["rows"]])


def jsonable(value: Any) -> Any:
    """A ClickHouse value as JSON can carry it (times ISO 8601, decimals and addresses as text)."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (Decimal, UUID, IPv4Address, IPv6Address)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return value


def result_body(result: QueryResult) -> bytes:
    """The JSON body of ``POST /v1/sql``."""
    return orjson.dumps(
        {
            "columns": result.columns,
            "types": result.types,
            "rows": [[jsonable(v) for v in row] for row in result.rows],
            "row_count": len(result.rows),
        }
    )


def render(result: QueryResult, fmt: str) -> str:
    """The result as ``table`` (rich), ``csv`` (header first) or ``json`` (an array of objects)."""
    rows = [[jsonable(v) for v in row] for row in result.rows]
    if fmt == "json":
        return orjson.dumps(
            [dict(zip(result.columns, row, strict=False)) for row in rows], option=orjson.OPT_INDENT_2
        ).decode()
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        writer.writerows([_text(v) for v in row] for row in rows)
        return out.getvalue().rstrip("\n")
    if fmt == "table":
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False)
        for name, type_name in zip(result.columns, result.types, strict=False):
            numeric = type_name.removeprefix("Nullable(").startswith(("Int", "UInt", "Float", "Decimal"))
            table.add_column(name, justify="right" if numeric else "left", overflow="fold")
        for row in rows:
            table.add_row(*(_text(v) for v in row))
        console = Console(file=io.StringIO(), width=200, force_terminal=False, color_system=None)
        console.print(table)
        console.print(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")
        return console.file.getvalue().rstrip("\n")  # type: ignore[attr-defined]  # our StringIO; rich types it as IO[str]
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def limits_from(settings: Settings) -> QueryLimits:
    """The analyst query limits configured by ``JOBSTREAM_SQL_MAX_*``."""
    return QueryLimits(
        max_rows=settings.sql_max_rows, max_bytes=settings.sql_max_bytes, max_seconds=settings.sql_max_execution_s
    )
