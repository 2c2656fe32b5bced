"""The job store: ClickHouse through clickhouse-connect, same code for chDB and a server.

One client per store, its calls serialised by a lock: chDB allows one engine
per process and silently returns empty results if queries interleave, and a
sync HTTP client must not run concurrent queries in one session
(ClickHouse/clickhouse-connect#295). Async callers use the ``a*`` methods,
which run the call on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import clickhouse_connect
import orjson

from sink.schema import migrate
from streams.events import EventType, JobEvent

logger = logging.getLogger(__name__)

EVENT_COLUMNS = [
    "tenant", "job_id", "seq", "type", "kind", "ts", "data", "schema_version", "kafka_partition", "kafka_offset",
]
RESULT_COLUMNS = ["tenant", "job_id", "calc_version", "kind", "result", "finished_at", "attempts"]


def connect(url: str):
    """A clickhouse-connect client for ``chdb://<dir>`` or ``http(s)://host:port``."""
    if url.startswith("chdb://"):
        path = Path(url.removeprefix("chdb://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(dsn=f"chdb://{path}")
    if url.startswith(("http://", "https://")):
        return clickhouse_connect.get_client(dsn=url, autogenerate_session_id=False)
    raise ValueError(f"CLICKHOUSE_URL must start with chdb://, http:// or https://, not {url!r}")


class ClickHouseStore:
    """Writes events/results and reads a job's history; schema migrated on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = connect(url)
        self._lock = threading.Lock()
        with self._lock:
            migrate(self._client)

    # --- writes (the sink) ----------------------------------------------------
    def insert_events(self, rows: Sequence[tuple[JobEvent, int, int]], dedup_token: str) -> None:
        """Insert events (with their Kafka partition/offset) and the results they carry.

        ``dedup_token`` names the exact Kafka range, so a redelivered batch is dropped
        by ClickHouse's insert deduplication instead of written twice.
        """
        event_rows = []
        result_rows = []
        for event, partition, offset in rows:
            event_rows.append([
                event.tenant, event.job_id, event.seq, event.type.value, event.kind, event.ts,
                orjson.dumps(event.data).decode(), event.schema_version, partition, offset,
            ])
            if event.type is EventType.SUCCEEDED:
                result_rows.append([
                    event.tenant, event.job_id, str(event.data.get("calc_version") or ""), event.kind,
                    orjson.dumps(event.data.get("result")).decode(), event.ts, int(event.data.get("attempt", 1)),
                ])
        with self._lock:
            if event_rows:
                self._client.insert("job_events", event_rows, column_names=EVENT_COLUMNS,
                                    settings={"insert_deduplication_token": f"{dedup_token}:events"})
            if result_rows:
                self._client.insert("job_results", result_rows, column_names=RESULT_COLUMNS,
                                    settings={"insert_deduplication_token": f"{dedup_token}:results"})

    # --- reads (API and gateway) ------------------------------------------------
    def job_events(self, tenant: str, job_id: str, after_seq: int = -1) -> list[JobEvent]:
        """A job's events in seq order, without duplicates, optionally only after ``after_seq``."""
        result = self.query(
            "SELECT seq, any(type), any(kind), any(ts), any(data), any(schema_version) FROM job_events "
            "WHERE tenant = {tenant:String} AND job_id = {job_id:String} AND seq > {after:Int64} "
            "GROUP BY seq ORDER BY seq",
            {"tenant": tenant, "job_id": job_id, "after": after_seq},
        )
        return [
            JobEvent(job_id=job_id, tenant=tenant, seq=seq, type=type_, kind=kind, ts=_utc(ts),
                     data=orjson.loads(data), schema_version=version)
            for seq, type_, kind, ts, data, version in result
        ]

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
        with self._lock:
            return list(self._client.query(sql, parameters=parameters or {}).result_rows)

    async def ajob_events(self, tenant: str, job_id: str, after_seq: int = -1) -> list[JobEvent]:
        return await asyncio.to_thread(self.job_events, tenant, job_id, after_seq)

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _utc(ts: datetime) -> datetime:
    """ClickHouse returns naive datetimes for DateTime64(3, 'UTC') columns; say they are UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)

