"""Jobs this process accepted recently, for read-your-writes while the sink catches up.

The store (ClickHouse) learns of a job only when the sink has written its
events; a GET in between must still find the job, and should not look older
than the SSE stream. So the API remembers the ``queued`` event of each job it
accepted, and, where a gateway runs in the same process, the live events of
those jobs too. Entries expire after ``ttl_s`` and the map is bounded.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from streams.events import JobEvent
from streams.wire import WireEvent, as_model


class RecentJobs:
    def __init__(self, ttl_s: float = 300.0, max_entries: int = 100_000) -> None:
        self._ttl_s = ttl_s
        self._max = max_entries
        self._jobs: OrderedDict[tuple[str, str], tuple[float, list[JobEvent]]] = OrderedDict()

    def add(self, queued: JobEvent) -> None:
        now = time.monotonic()
        self._jobs[(queued.tenant, queued.job_id)] = (now, [queued])
        while self._jobs and (len(self._jobs) > self._max or next(iter(self._jobs.values()))[0] < now - self._ttl_s):
            self._jobs.popitem(last=False)

    def discard(self, tenant: str, job_id: str) -> None:
        self._jobs.pop((tenant, job_id), None)

    def observe(self, event: JobEvent | WireEvent) -> None:
        """Record a live event of a job accepted here (others are ignored)."""
        entry = self._jobs.get((event.tenant, event.job_id))
        if entry is not None:
            entry[1].append(as_model(event))

    def events(self, tenant: str, job_id: str) -> list[JobEvent]:
        entry = self._jobs.get((tenant, job_id))
        if entry is None or entry[0] < time.monotonic() - self._ttl_s:
            return []
        return list(entry[1])
