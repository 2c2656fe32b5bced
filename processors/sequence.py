"""Event ``seq`` numbers that stay safe when a job is run twice (at-least-once).

Readers dedupe by ``(job_id, seq)``, so a re-run must stay invisible to them: terminal events
always carry ``TERMINAL_SEQ`` (2**31 - 1), so the two runs' terminals collapse; other events
carry ``max(previous seq + 1, centiseconds since submit)``, so a re-run, which starts seconds
after the crash, numbers above the crashed run. No durable counter, only clocks that agree
within the crash-detection time. Seqs are strictly increasing per job but not contiguous.
"""

from __future__ import annotations

from datetime import UTC, datetime

TERMINAL_SEQ = 2**31 - 1
_TICKS_PER_S = 100
# Leave room below TERMINAL_SEQ for +1 steps even for a job submitted ~248 days ago.
_MAX_TIME_SEQ = TERMINAL_SEQ - 2**24


class SeqClock:
    """Hands out the next non-terminal seq of each job in flight on this worker."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def next(self, job_id: str, submitted_at: datetime, now: datetime | None = None) -> int:
        now = now or datetime.now(UTC)
        ticks = int((now - submitted_at).total_seconds() * _TICKS_PER_S)
        seq = max(self._last.get(job_id, 0) + 1, min(ticks, _MAX_TIME_SEQ))
        self._last[job_id] = seq
        return seq

    def forget(self, job_id: str) -> None:
        self._last.pop(job_id, None)

    def __len__(self) -> int:
        return len(self._last)
