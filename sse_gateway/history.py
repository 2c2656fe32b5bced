"""Stream history from ClickHouse, as the same ``Entry`` objects the live tail produces.

``job_events`` keeps each event's Kafka partition and offset, so history knows
where it sits in ``jobs.events`` and meets the gateway's recent window exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC

import orjson

from sse_gateway.entry import Entry
from store.clickhouse import ClickHouseStore
from store.schema import FIRST_OF_SEQ, visible_events
from streams.events import EventType, JobEvent


def _entry(
    tenant: str, job_id: str, seq: int, type_: str, kind: str, ts, data: str, version: int, partition: int, offset: int
) -> Entry:
    event = JobEvent(
        job_id=job_id,
        tenant=tenant,
        seq=seq,
        type=EventType(type_),
        kind=kind,
        ts=ts if ts.tzinfo else ts.replace(tzinfo=UTC),
        data=orjson.loads(data),
        schema_version=version,
    )
    return Entry.from_event(event, partition, offset)


def job_history(store: ClickHouseStore, tenant: str, job_id: str) -> list[Entry]:
    """Every stored event of one job, one per seq (the first to reach Kafka), in seq order."""
    rows = store.query(
        f"SELECT seq, {FIRST_OF_SEQ} FROM job_events WHERE tenant = {{tenant:String}} AND job_id = {{job_id:String}} "
        "GROUP BY seq ORDER BY seq",
        {"tenant": tenant, "job_id": job_id},
    )
    return [_entry(tenant, job_id, seq, *first) for seq, first in rows]


def tenant_history(
    store: ClickHouseStore,
    tenant: str,
    ranges: dict[int, tuple[int, int]],
    kinds: list[str],
    types: list[str],
    job_ids: list[str],
    limit: int,
) -> list[Entry]:
    """A tenant's stored events with offsets in ``[lo, hi)`` per partition, filtered, ordered by
    (partition, offset); at most ``limit`` rows (the caller asks for one more to detect "too many").

    Only the events a stream shows (``sse_gateway.visibility``), judged on each job's whole stored
    history, so a resumed stream hides a re-run exactly as the live one did."""
    if not ranges:
        return []
    params: dict[str, object] = {"tenant": tenant, "limit": limit}
    clauses = []
    for i, (partition, (lo, hi)) in enumerate(sorted(ranges.items())):
        clauses.append(
            f"(kafka_partition = {{p{i}:UInt32}} AND kafka_offset >= {{lo{i}:UInt64}} "
            f"AND kafka_offset < {{hi{i}:UInt64}})"
        )
        params.update({f"p{i}": partition, f"lo{i}": lo, f"hi{i}": hi})
    where = ["(" + " OR ".join(clauses) + ")"]
    for name, values in (("kind", kinds), ("type", types), ("job_id", job_ids)):
        if values:
            where.append(f"{name} IN {{{name}s:Array(String)}}")
            params[f"{name}s"] = list(values)
    jobs = (
        f"tenant = {{tenant:String}} AND job_id IN (SELECT job_id FROM job_events WHERE "
        f"tenant = {{tenant:String}} AND {' AND '.join(where)})"
    )
    rows = store.query(
        "SELECT job_id, seq, type, kind, ts, data, schema_version, kafka_partition, kafka_offset "
        f"FROM ({visible_events(jobs)}) WHERE {' AND '.join(where)} ORDER BY kafka_partition, kafka_offset "
        "LIMIT {limit:UInt64}",
        params,
    )
    return [
        _entry(tenant, job_id, seq, type_, kind, ts, data, version, partition, offset)
        for job_id, seq, type_, kind, ts, data, version, partition, offset in rows
    ]


def first_offsets(store: ClickHouseStore, partitions: list[int]) -> dict[int, int]:
    """The lowest Kafka offset ClickHouse still holds per partition (rows below it were never
    written or were removed by retention); partitions without rows are absent."""
    rows = store.query(
        "SELECT kafka_partition, min(kafka_offset) FROM job_events WHERE kafka_partition IN {ps:Array(UInt32)} "
        "GROUP BY kafka_partition",
        {"ps": partitions},
    )
    return {int(p): int(o) for p, o in rows}


async def afirst_offsets(store: ClickHouseStore, partitions: list[int]) -> dict[int, int]:
    return await asyncio.to_thread(first_offsets, store, partitions)


async def ajob_history(store: ClickHouseStore, tenant: str, job_id: str) -> list[Entry]:
    return await asyncio.to_thread(job_history, store, tenant, job_id)


async def atenant_history(
    store: ClickHouseStore,
    tenant: str,
    ranges: dict[int, tuple[int, int]],
    kinds: list[str],
    types: list[str],
    job_ids: list[str],
    limit: int,
) -> list[Entry]:
    return await asyncio.to_thread(tenant_history, store, tenant, ranges, kinds, types, job_ids, limit)
