"""When a failed job is tried again: exponential backoff with jitter, up to a limit.

Only transient failures are retried (``TransientError``, an unexpected exception
of a job running alone, a calculation process that died). Bad params and
``CalculationError`` fail at once. Each retry is visible as a ``retrying`` event.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from streams.settings import Settings


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int  #: attempts in all, the first included
    base_s: float  #: delay before the second attempt (before jitter)
    max_s: float  #: no delay is longer than this

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(settings.retry_max_attempts, settings.retry_backoff_ms / 1000, settings.retry_backoff_max_ms / 1000)

    def should_retry(self, attempt: int) -> bool:
        """True when the job may run again after failing attempt number ``attempt`` (1-based)."""
        return attempt < self.max_attempts

    def delay_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay after failed attempt ``attempt``: base·2^(attempt-1), capped, times a jitter in [0.5, 1.5).

        The jitter spreads retries of jobs that failed together (one batch) apart.
        """
        rng = rng or random.Random()
        raw = min(self.max_s, self.base_s * 2 ** max(0, attempt - 1))
        return min(self.max_s, raw * (0.5 + rng.random()))
