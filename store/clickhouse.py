"""The job store: ClickHouse through clickhouse-connect, same code for chDB and a server.

One client per store, its calls serialised by a lock (chDB allows one engine per process and
returns empty results if queries interleave; a sync HTTP session must not run concurrent
queries); async callers use the ``a*`` methods. Analysts' SQL, vetted by ``store.sql_guard``,
runs on clients of its own with ``readonly=1`` and result-size and time limits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import orjson
from pydantic import SecretStr

from store import sql_guard
from store.schema import FIRST_OF_SEQ, apply_events_ttl, migrate
from streams.errors import JobstreamError
from streams.events import JobEvent

if TYPE_CHECKING:
    from streams.settings import Settings

logger = logging.getLogger(__name__)

EVENT_COLUMNS = [
    "tenant",
    "job_id",
    "seq",
    "type",
    "kind",
    "ts",
    "data",
    "schema_version",
    "kafka_partition",
    "kafka_offset",
]

# A redelivered batch's token was seen: ClickHouse drops the block. Dependent
# materialized views get their own derived tokens, so a retry after a failure
# half-way through the views completes them instead of skipping them.
_INSERT_SETTINGS = {"deduplicate_blocks_in_dependent_materialized_views": 1}


# How the sink's JSON lines are read: ISO 8601 times, `data` objects kept as JSON text, extra fields ignored.
_JSON_SETTINGS = {
    "date_time_input_format": "best_effort",
    "input_format_json_read_objects_as_strings": 1,
    "input_format_skip_unknown_fields": 1,
}


class StoreClosed(JobstreamError, ConnectionError):
    """The store was closed; ``open()`` reconnects."""


@dataclass(frozen=True)
class QueryLimits:
    """What one analyst query may cost (ClickHouse enforces each)."""

    max_rows: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_seconds: float = 30.0

    def settings(self) -> dict[str, Any]:
        # readonly last: a server checks a request's settings against the session as it was.
        return {
            "max_result_rows": self.max_rows,
            "max_result_bytes": self.max_bytes,
            "result_overflow_mode": "throw",
            "max_execution_time": self.max_seconds,
            "readonly": 1,
        }


@dataclass(frozen=True)
class AnalystLogin:
    """The ClickHouse user analysts' SQL runs as on a server (``JOBSTREAM_SQL_CLICKHOUSE_USER``/``_PASSWORD``)."""

    username: str
    password: str = field(default="", repr=False)


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[tuple]


@dataclass(frozen=True)
class ServerAccess:
    """How to reach a ClickHouse server beyond its URL: the password (``CLICKHOUSE_PASSWORD``, so it is not in
    the URL; a ``SecretStr``, never in a repr or a log) and the CA an https:// server is checked against."""

    password: SecretStr | None = None
    ca_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerAccess:
        return cls(settings.clickhouse_password, settings.clickhouse_ca_file)


def redact(url: str) -> str:
    """``url`` with any password in it replaced, for logs and banners."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def connect(
    url: str,
    database: str | None = None,
    settings: dict[str, Any] | None = None,
    login: AnalystLogin | None = None,
    access: ServerAccess | None = None,
):
    """A clickhouse-connect client for ``chdb://<dir>`` or ``http(s)://host:port`` (as ``login``'s user if given;
    ``access``: the server's password and CA)."""
    extra: dict[str, Any] = {}
    access = access or ServerAccess()
    if (access.password is not None or access.ca_file is not None) and url.startswith("chdb://"):
        raise ValueError("CLICKHOUSE_PASSWORD and CLICKHOUSE_CA_FILE need a ClickHouse server; chDB has neither")
    if access.ca_file is not None:
        if not url.startswith("https://"):
            raise ValueError("CLICKHOUSE_CA_FILE checks an https:// server: CLICKHOUSE_URL must start with https://")
        extra.update(verify=True, ca_cert=str(access.ca_file))
    if access.password is not None and login is None:
        extra["password"] = access.password.get_secret_value()
    if database:
        extra["database"] = database
    if settings:
        extra["settings"] = settings
    if login is not None:
        if url.startswith("chdb://"):
            raise ValueError(
                "an analyst ClickHouse user needs a ClickHouse server (CLICKHOUSE_URL=http…); "
                "embedded chDB has no users"
            )
        extra.update(username=login.username, password=login.password)
    if url.startswith("chdb://"):
        path = Path(url.removeprefix("chdb://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path}", **extra)
    if url.startswith(("http://", "https://")):
        # clickhouse-connect takes host, port and user from the DSN but not its scheme: without
        # ``interface`` an https:// URL would be spoken as plain HTTP.
        interface = "https" if url.startswith("https://") else "http"
        return clickhouse_connect.get_client(dsn=url, interface=interface, autogenerate_session_id=False, **extra)
    raise ValueError(f"CLICKHOUSE_URL must start with chdb://, http:// or https://, not {url!r}")


class ClickHouseStore:
    """Writes events/results and reads a job's history; schema migrated on open.

    ``database`` (default: the connection's) keeps a whole schema apart, e.g.
    for a test of migrations inside the one chDB engine a process may have.
    """

    def __init__(
        self,
        url: str,
        *,
        database: str | None = None,
        analyst: AnalystLogin | None = None,
        access: ServerAccess | None = None,
    ) -> None:
        self.url = url
        self.database = database
        self.analyst = analyst
        self.access = access or ServerAccess()
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._client: Any = None
        self._readonly: dict[QueryLimits, Any] = {}  # one read-only session per set of limits
        self._parser: Any = None  # runs sql_guard's parse step only: no settings, so its SQL goes as it is
        if database:
            admin = connect(url, access=self.access)
            try:
                admin.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            finally:
                admin.close()
        self.open()

    def __repr__(self) -> str:
        return f"ClickHouseStore({redact(self.url)!r}, database={self.database!r}, access={self.access!r})"

    def open(self) -> ClickHouseStore:
        """Connect (again, after ``close()``) and bring the schema up to date."""
        with self._lock:
            if self._client is None:
                client = connect(self.url, self.database, access=self.access)
                try:
                    migrate(client)
                except Exception:
                    client.close()
                    raise
                self._client = client
        return self

    def close(self) -> None:
        with self._read_lock:
            for client in self._readonly.values():
                client.close()
            self._readonly.clear()
            if self._parser is not None:
                self._parser.close()
                self._parser = None
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @property
    def closed(self) -> bool:
        return self._client is None

    def _live(self) -> Any:
        if self._client is None:
            raise StoreClosed(f"the ClickHouse store at {self.url} is closed")
        return self._client

    # --- writes (the sink) ----------------------------------------------------
    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], dedup_token: str) -> None:
        """Insert rows; a retry with the same ``dedup_token`` is dropped by ClickHouse."""
        if not rows:
            return
        with self._lock:
            self._live().insert(
                table,
                rows,
                column_names=list(columns),
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": dedup_token},
            )

    def insert_json(self, table: str, lines: bytes, dedup_token: str) -> None:
        """Insert JSONEachRow ``lines`` (ClickHouse parses them); a retry with the same token is dropped."""
        if not lines:
            return
        with self._lock:
            self._live().raw_insert(
                table,
                insert_block=lines,
                fmt="JSONEachRow",
                settings={**_INSERT_SETTINGS, **_JSON_SETTINGS, "insert_deduplication_token": dedup_token},
            )

    def job_times(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[datetime | None, datetime | None]]:
        """(submitted_at, started_at) of jobs already in the store, for timing their outcomes."""
        if not keys:
            return {}
        rows = self.query(
            "SELECT tenant, job_id, min(submitted_at), min(started_at) FROM jobs_state "
            "WHERE (tenant, job_id) IN {keys:Array(Tuple(String, String))} GROUP BY tenant, job_id",
            {"keys": [tuple(k) for k in keys]},
        )
        return {(t, j): (_utc(s) if s else None, _utc(r) if r else None) for t, j, s, r in rows}

    def apply_events_ttl(self, days: int) -> str | None:
        with self._lock:
            return apply_events_ttl(self._live(), days)

    # --- reads (API and gateway) ------------------------------------------------
    def job_events(self, tenant: str, job_id: str, after_seq: int = -1) -> list[JobEvent]:
        """A job's events in seq order, optionally only after ``after_seq``.

        One event per seq: of a seq stored twice (a re-run's terminal event) the first to reach
        Kafka, which is the one SSE clients saw (one job is in one partition).
        """
        result = self.query(
            f"SELECT seq, {FIRST_OF_SEQ} FROM job_events "
            "WHERE tenant = {tenant:String} AND job_id = {job_id:String} AND seq > {after:Int64} "
            "GROUP BY seq ORDER BY seq",
            {"tenant": tenant, "job_id": job_id, "after": after_seq},
        )
        return [
            JobEvent(
                job_id=job_id,
                tenant=tenant,
                seq=seq,
                type=type_,
                kind=kind,
                ts=_utc(ts),
                data=orjson.loads(data),
                schema_version=version,
            )
            for seq, (type_, kind, ts, data, version, _, _) in result
        ]

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            return list(self._live().query(sql, parameters=parameters or {}).result_rows)

    async def ajob_events(self, tenant: str, job_id: str, after_seq: int = -1) -> list[JobEvent]:
        return await asyncio.to_thread(self.job_events, tenant, job_id, after_seq)

    # --- analysts ------------------------------------------------------------------
    def vet_sql(self, sql: str) -> str:
        """The text that may run for an analyst's ``sql`` (``store.sql_guard``), or ``sql_guard.Refused``."""
        with self._read_lock:
            self._check_open()
            if self._parser is None:
                self._parser = connect(self.url, self.database, login=self.analyst, access=self.access)
            return sql_guard.vet(self._parser, sql)

    def readonly_query(self, sql: str, limits: QueryLimits = QueryLimits()) -> QueryResult:
        """Run an analyst's SQL: vetted by ``store.sql_guard``, then on a ``readonly=1`` session with ``limits``.

        Runs beside the sink's inserts (its own clients), one analyst query at a time. What runs
        is ClickHouse's canonical text of the checked statement.
        """
        checked = self.vet_sql(sql)
        with self._read_lock:
            self._check_open()
            client = self._readonly.get(limits)
            if client is None:
                client = self._readonly[limits] = connect(
                    self.url, self.database, settings=limits.settings(), login=self.analyst, access=self.access
                )
            result = client.query(checked)
            columns, types = list(result.column_names), [t.name for t in result.column_types]
            if not columns:  # chDB sends no header for an empty result: ask for the shape
                columns, types = _shape(client, checked)
            return QueryResult(columns, types, list(result.result_rows))

    def _check_open(self) -> None:
        if self.closed:
            raise StoreClosed(f"the ClickHouse store at {self.url} is closed")

    async def areadonly_query(self, sql: str, limits: QueryLimits = QueryLimits()) -> QueryResult:
        return await asyncio.to_thread(self.readonly_query, sql, limits)


def _shape(client: Any, checked: str) -> tuple[list[str], list[str]]:
    """Column names and types of a vetted query that returned nothing (best effort: SELECTs only)."""
    try:
        rows = client.query(f"DESCRIBE ({checked})").result_rows
    except Exception:
        return [], []
    return [row[0] for row in rows], [row[1] for row in rows]


def _utc(ts: datetime) -> datetime:
    """ClickHouse returns naive datetimes for DateTime64(3, 'UTC') columns; say they are UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
