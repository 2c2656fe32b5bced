"""One job's state as every reader sees it: the store's events plus this process's recent ones."""

from __future__ import annotations

from store.clickhouse import ClickHouseStore
from store.recent import RecentJobs
from streams.events import JobView


async def job_view(store: ClickHouseStore, recent: RecentJobs, tenant: str, job_id: str) -> JobView | None:
    """The job folded from ClickHouse and, while the sink lags, the recent-accepts cache; None if unknown."""
    events = await store.ajob_events(tenant, job_id)
    return JobView.fold(events + recent.events(tenant, job_id))
