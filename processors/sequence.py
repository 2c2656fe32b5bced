"""Event ``seq`` numbers that stay safe when a job is run twice (at-least-once).

A worker that dies mid-batch has its uncommitted requests redelivered, and the
re-run emits a job's events a second time. Readers dedupe by ``(job_id, seq)``
(SSE ``Last-Event-ID``, ClickHouse reads that ``GROUP BY seq``, ``JobView.fold``),
so two rules keep a re-run invisible to them:

* **Terminal events** (succeeded / failed / cancelled) always carry
  ``TERMINAL_SEQ`` (2**31 - 1, the largest seq; it fits ClickHouse's UInt32).
  The original's and the re-run's terminal collapse into one; it is also
  always a job's last event.
* **Other events** carry ``max(previous seq of this run + 1, centiseconds since
  the job was submitted)``. A re-run starts after the crashed run's last event
  (the crash has to be noticed first, which takes seconds), so its seqs are
  higher: they never collide with the crashed run's, and they stay strictly
  increasing per job. This needs no durable counter, only clocks that agree to
  within that crash-detection time (NTP does far better). ``queued`` is seq 0,
  written by the API.

So seqs are strictly increasing per job but not contiguous.
"""

from __future__ import annotations

from datetime import datetime, timezone

TERMINAL_SEQ = 2**31 - 1
_TICKS_PER_S = 100
# Leave room below TERMINAL_SEQ for +1 steps even for a job submitted ~248 days ago.
_MAX_TIME_SEQ = TERMINAL_SEQ - 2**24


class SeqClock:
    """Hands out the next non-terminal seq of each job in flight on this worker."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, job_id: str, submitted_at: datetime, now: datetime | None = None) -> int:
        now = now or datetime.now(timezone.utc)
        ticks = int((now - submitted_at).total_seconds() * _TICKS_PER_S)
        seq = max(self._last.get(job_id, 0) + 1, min(ticks, _MAX_TIME_SEQ))
        self._last[job_id] = seq
        return seq

    def forget(self, job_id: str) -> None:
        self._last.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._last)
