"""One job's state as every reader sees it: the store's events plus this process's recent ones."""

from __future__ import annotations

from store.clickhouse import ClickHouseStore
from store.recent import RecentJobs
from streams.events import JobEvent, JobStatus, JobView, event_to_view


async def job_view(
    store: ClickHouseStore, recent: RecentJobs, tenant: str, job_id: str, finished: JobEvent | None = None
) -> JobView | None:
    """The job folded from ClickHouse and, while the sink lags, the recent-accepts cache; None if unknown.

    ``finished``: the job's terminal event, seen live (a long-poll was woken by it); it counts even
    when the events that led to it have not reached the store yet."""
    events = await store.ajob_events(tenant, job_id)
    view = JobView.fold(events + recent.events(tenant, job_id))
    if finished is not None and (view is None or not view.status.terminal):
        view = finish(view, finished)
    return view


def finish(view: JobView | None, terminal: JobEvent) -> JobView:
    """Apply a terminal event to a view that has not seen the job run yet (its ``running`` event is
    still on its way to the store): the job ran, or the terminal event would not exist."""
    if view is None:  # nothing of the job here yet: when it was submitted is not known
        view = event_to_view(None, terminal).model_copy(update={"submitted_at": None})
    return event_to_view(view.model_copy(update={"status": JobStatus.RUNNING}), terminal)
