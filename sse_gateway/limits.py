"""How many SSE streams one gateway process holds, in all and per tenant (429 past either)."""

from __future__ import annotations

from collections import Counter

from streams.errors import JobstreamError


class TooManyStreams(JobstreamError):
    """A connection limit is reached; ``scope`` is ``"process"`` or ``"tenant"``."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} limit of {limit} streams reached")
        self.scope = scope
        self.limit = limit


class Slot:
    """One admitted stream; ``release()`` is idempotent, so every exit path may call it."""

    __slots__ = ("_limits", "tenant", "_released")

    def __init__(self, limits: ConnectionLimits, tenant: str) -> None:
        self._limits = limits
        self.tenant = tenant
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limits._release(self.tenant)


class ConnectionLimits:
    def __init__(self, max_total: int, max_per_tenant: int) -> None:
        self.max_total = max_total
        self.max_per_tenant = max_per_tenant
        self.total = 0
        self.per_tenant: Counter[str] = Counter()

    def acquire(self, tenant: str) -> Slot:
        if self.total >= self.max_total:
            raise TooManyStreams("process", self.max_total)
        if self.per_tenant[tenant] >= self.max_per_tenant:
            raise TooManyStreams("tenant", self.max_per_tenant)
        self.total += 1
        self.per_tenant[tenant] += 1
        return Slot(self, tenant)

    def _release(self, tenant: str) -> None:
        self.total -= 1
        self.per_tenant[tenant] -= 1
        if self.per_tenant[tenant] <= 0:
            del self.per_tenant[tenant]
