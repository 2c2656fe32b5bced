"""The ClickHouse side of replays: current statuses for the status filter, and the diff.

The diff is the ``replay_diff`` parameterised view (store/schema.py), so analysts get the
same answer from SQL: ``SELECT * FROM replay_diff(tenant = 'acme', replay_id = '...')``.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from store.clickhouse import ClickHouseStore

OUTCOMES = ("equal", "changed", "failed", "pending")

DIFF_SQL = """
SELECT original_job_id, replay_job_id, original_status, replay_status, original_version, replay_version,
    original_result, replay_result, outcome, replay_error
FROM replay_diff(tenant = {tenant:String}, replay_id = {replay_id:String})
WHERE {outcome:String} = '' OR outcome = {outcome:String}
ORDER BY original_job_id
LIMIT {limit:UInt32} OFFSET {offset:UInt32}
"""

SUMMARY_SQL = """
SELECT outcome, count() FROM replay_diff(tenant = {tenant:String}, replay_id = {replay_id:String}) GROUP BY outcome
"""


class DiffRow(BaseModel):
    original_job_id: str
    replay_job_id: str
    original_status: str
    replay_status: str
    original_version: str
    replay_version: str
    original_result: Any = None
    replay_result: Any = None
    outcome: str
    replay_error: str = ""


def statuses(store: ClickHouseStore, tenant: str, job_ids: list[str]) -> dict[str, str]:
    """Current status of each job the store knows (the `jobs` view), for ``--status``."""
    found: dict[str, str] = {}
    for start in range(0, len(job_ids), 10_000):
        rows = store.query(
            "SELECT job_id, status FROM jobs WHERE tenant = {tenant:String} AND job_id IN {ids:Array(String)}",
            {"tenant": tenant, "ids": job_ids[start : start + 10_000]},
        )
        found.update(dict(rows))
    return found


def summary(store: ClickHouseStore, tenant: str, replay_id: str) -> dict[str, int]:
    """How many replayed jobs are equal / changed / failed / pending (0 for each absent outcome)."""
    counts = dict(store.query(SUMMARY_SQL, {"tenant": tenant, "replay_id": replay_id}))
    return {outcome: int(counts.get(outcome, 0)) for outcome in OUTCOMES}


def rows(
    store: ClickHouseStore, tenant: str, replay_id: str, outcome: str | None = None, limit: int = 1000, offset: int = 0
) -> list[DiffRow]:
    found = store.query(
        DIFF_SQL, {"tenant": tenant, "replay_id": replay_id, "outcome": outcome or "", "limit": limit, "offset": offset}
    )
    return [
        DiffRow(
            original_job_id=o,
            replay_job_id=r,
            original_status=os_,
            replay_status=rs,
            original_version=ov,
            replay_version=rv,
            original_result=_json(ores),
            replay_result=_json(rres),
            outcome=out,
            replay_error=err,
        )
        for o, r, os_, rs, ov, rv, ores, rres, out, err in found
    ]


def _json(raw: str | None) -> Any:
    return orjson.loads(raw) if raw else None
