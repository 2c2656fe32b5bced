"""Long-poll: requests that wait for a job to finish (``?wait=``, ``Prefer: wait=``).

A waiting request holds a future in this registry, nothing else: no thread, no Kafka consumer,
no polling of the store. The process's one tail of ``jobs.events`` (the SSE fanout where the
gateway runs in the same process, else ``finished.FinishedTail``) calls ``observe`` with every
terminal event, on the event loop; the registry wakes that job's waiters and remembers the event
for a while (JOBSTREAM_WAIT_MEMORY_JOBS jobs), so a request arriving just after the job finished
(before the sink wrote it) does not wait in vain.

A request registers (``expect``) *before* it reads the job's state, so an event that lands in
between is not missed. Past JOBSTREAM_MAX_WAITS waiting requests, a new one answers at once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from edge.problems import Problem
from streams.events import TERMINAL_EVENTS, JobEvent
from streams.wire import WireEvent, as_model

logger = logging.getLogger(__name__)

_Key = tuple[str, str]  # (tenant, job id)
_NUMBER = re.compile(r"^[0-9]{1,12}(\.[0-9]{1,9})?$")  # seconds: ASCII digits; no sign, exponent, inf or nan


class Ticket:
    """One waiting request's claim on a job's terminal event."""

    __slots__ = ("key", "future")

    def __init__(self, key: _Key, future: asyncio.Future[JobEvent]) -> None:
        self.key = key
        self.future = future

    async def wait(self, timeout_s: float) -> JobEvent | None:
        """The job's terminal event, or None when ``timeout_s`` passed first."""
        if self.future.done():
            return self.future.result()
        if timeout_s <= 0:
            return None
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(self.future)
        except TimeoutError:
            return None


class JobWaits:
    """Waiting requests by job, and the terminal events of the jobs that finished last."""

    def __init__(self, max_waits: int, memory_jobs: int) -> None:
        self.max_waits = max_waits  # JOBSTREAM_MAX_WAITS
        self.memory_jobs = memory_jobs  # JOBSTREAM_WAIT_MEMORY_JOBS
        self.waiting = 0  #: requests waiting now
        self._waiters: dict[_Key, set[asyncio.Future[JobEvent]]] = {}
        self._finished: OrderedDict[_Key, JobEvent] = OrderedDict()

    def observe(self, live: JobEvent | WireEvent) -> None:
        """A job event from the tail (on the loop): a terminal one wakes the job's waiters."""
        if live.type not in TERMINAL_EVENTS:
            return
        event = as_model(live)
        key = (event.tenant, event.job_id)
        if key not in self._finished:  # a re-run's terminal collapses into the first
            self._finished[key] = event
            while len(self._finished) > self.memory_jobs:
                self._finished.popitem(last=False)
        for future in self._waiters.pop(key, ()):
            if not future.done():
                future.set_result(self._finished.get(key, event))

    def finished(self, tenant: str, job_id: str) -> JobEvent | None:
        """The job's terminal event if this process saw it lately."""
        return self._finished.get((tenant, job_id))

    @contextmanager
    def expect(self, tenant: str, job_id: str) -> Iterator[Ticket | None]:
        """Register for the job's terminal event for the block (None past JOBSTREAM_MAX_WAITS)."""
        if self.waiting >= self.max_waits:
            logger.info("%d requests are waiting already; answering at once", self.waiting)
            yield None
            return
        key = (tenant, job_id)
        future: asyncio.Future[JobEvent] = asyncio.get_running_loop().create_future()
        known = self._finished.get(key)
        if known is not None:
            future.set_result(known)
        else:
            self._waiters.setdefault(key, set()).add(future)
        self.waiting += 1
        try:
            yield Ticket(key, future)
        finally:
            self.waiting -= 1
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[key]
            if not future.done():
                future.cancel()


@dataclass(frozen=True)
class Prefer:
    """What a request's ``Prefer`` header (RFC 7240) asks of the API: ``respond-async``, ``wait=S``."""

    wait_s: float | None = None
    respond_async: bool = False


def wait_seconds(raw: str, field: str, max_wait_s: float) -> float:
    """Seconds to wait from a parameter: a non-negative decimal, capped at JOBSTREAM_MAX_WAIT_S; else 400."""
    text = raw.strip(" \t")
    if not _NUMBER.fullmatch(text):
        raise Problem(
            400,
            "Invalid wait",
            f"{field} is a number of seconds (like 10 or 2.5), got {raw[:50]!r}",
            errors=[{"field": field, "reason": "not a non-negative number of seconds"}],
        )
    return min(float(text), max_wait_s)


def parse_prefer(values: list[str], max_wait_s: float) -> Prefer:
    """``Prefer`` header values (several headers, comma-separated preferences, ``;`` parameters ignored);
    the first ``wait`` counts (RFC 7240 §2). Unknown preferences are ignored; a bad ``wait`` is 400."""
    wait_s: float | None = None
    respond_async = False
    for header in values:
        for item in header.split(","):
            name, _, value = item.split(";", 1)[0].partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait" and wait_s is None:
                wait_s = wait_seconds(value.strip(" \t").strip('"'), "Prefer", max_wait_s)
    return Prefer(wait_s, respond_async)
