"""The recent window: the last events the tail dispatched, in memory, for streams' history.

At most ``JOBSTREAM_SSE_RECENT_WINDOW_S`` seconds and ``JOBSTREAM_SSE_RECENT_MAX_EVENTS``
events, kept as plain tuples (``Entry.row``) the garbage collector does not track. ``start``
says, per partition, from which offset on the window holds every record: a stream's history
is ClickHouse (every record below the sink's committed offset) ∪ this window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from sse_gateway.entry import Entry


class RecentWindow:
    """Touched on the event loop only."""

    def __init__(self, window_s: float, max_events: int) -> None:
        self.window_s = window_s
        self.max_events = max_events
        self.enabled = max_events > 0 and window_s > 0
        self.start: list[int] = []  # per partition: the window holds every record from here on
        self._rows: deque[tuple] = deque()  # Entry.row()s, oldest first
        self._by_job: dict[str, deque[tuple]] = {}

    def __len__(self) -> int:
        return len(self._rows)

    def repeats(self, entry: Entry) -> bool:
        """The job's events in the window already have this seq (a resent chunk, a re-run's terminal).

        Only the same seq: a lower one is news, e.g. the API's ``queued`` landing after the
        worker's ``running`` (two producers); dropping it left the window without the job's start.
        """
        recent = self._by_job.get(entry.job_id)
        return recent is not None and any(row[5] == entry.seq for row in recent)

    def add(self, entry: Entry, now: float) -> None:
        """Keep ``entry`` (received at monotonic time ``now``); with the window off, just move its start."""
        if self.enabled:
            row = entry.row(now)
            self._rows.append(row)
            self._by_job.setdefault(entry.job_id, deque()).append(row)
        else:
            self.start[entry.partition] = entry.offset + 1

    def job(self, job_id: str) -> list[Entry]:
        return [Entry.from_row(row) for row in self._by_job.get(job_id, ())]

    def tenant(self, tenant: str, accepts: Callable[[Entry], bool], since: list[int]) -> list[Entry]:
        """The tenant's accepted events at or after ``since`` (per partition), in arrival order."""
        found = (Entry.from_row(row) for row in self._rows if row[4] == tenant and row[1] >= since[row[0]])
        return [e for e in found if accepts(e)]

    def evict(self) -> None:
        """Forget what is older than the window or beyond its size, moving ``start`` past it."""
        oldest = time.monotonic() - self.window_s
        limit = self.max_events
        rows = self._rows
        while rows and (len(rows) > limit or rows[0][9] < oldest):
            partition, offset, _, job_id = rows.popleft()[:4]
            self.start[partition] = max(self.start[partition], offset + 1)
            per_job = self._by_job.get(job_id)
            if per_job:
                per_job.popleft()
                if not per_job:
                    del self._by_job[job_id]
