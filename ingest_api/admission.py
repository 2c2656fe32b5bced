"""Per-tenant admission: a cap on each tenant's waiting jobs, and an optional rate limit per tenant.

Past its cap (``JOBSTREAM_TENANT_MAX_QUEUED_JOBS``, per-tenant overrides) or its rate
(``JOBSTREAM_TENANT_RATE_PER_S`` with ``JOBSTREAM_TENANT_RATE_BURST``), a tenant's submits get
429 problem+json with a ``Retry-After``; other tenants are not touched. The waiting counts come from
``streams.backlog.TenantBacklog`` (every API process sees every tenant's jobs). The rate limit is a
token bucket per API process: behind N API processes a tenant may submit N times its rate.
The global ``JOBSTREAM_MAX_QUEUED_JOBS`` (``backpressure.LagMonitor``) stays the last line.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from edge.problems import Problem
from streams.backlog import TenantBacklog
from streams.settings import Settings
from streams.tenancy import TenantPolicies
from telemetry import metrics

QUEUE = "queue"  #: throttled because the tenant's waiting jobs reached its cap
RATE = "rate"  #: throttled by the tenant's rate limit


@dataclass(frozen=True)
class AdmissionConfig:
    policies: TenantPolicies
    retry_after_s: int  #: JOBSTREAM_RETRY_AFTER_S: the hint before a drain rate is measured
    retry_after_max_s: int  #: JOBSTREAM_RETRY_AFTER_MAX_S

    @classmethod
    def from_settings(cls, settings: Settings) -> AdmissionConfig:
        return cls(TenantPolicies.from_settings(settings), settings.retry_after_s, settings.retry_after_max_s)


class Admission:
    """Decides, per tenant, whether ``n`` more jobs may be accepted now (event loop only)."""

    def __init__(self, config: AdmissionConfig, backlog: TenantBacklog | None) -> None:
        self._config = config
        self.backlog = backlog
        self._buckets: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, when), only for rate-limited tenants
        self.throttled: dict[str, dict[str, int]] = {}  #: tenant -> reason -> 429s answered by this process

    def check(self, tenant: str, n: int = 1) -> None:
        """Raise a 429 ``Problem`` if ``tenant`` may not add ``n`` jobs now; else take ``n`` tokens."""
        policy = self._config.policies.of(tenant)
        backlog = self.backlog
        if backlog is not None:
            waiting = backlog.waiting(tenant)
            if waiting + n > policy.max_queued_jobs:
                over = waiting + n - policy.max_queued_jobs
                retry = self._hint(over / backlog.tenant_rate(tenant) if backlog.tenant_rate(tenant) > 0 else None)
                self._throttled(tenant, QUEUE)
                raise Problem(
                    429,
                    "Too many queued jobs for this tenant",
                    f"{waiting} of your jobs are waiting to start (at most {policy.max_queued_jobs}); "
                    f"retry in about {retry}s",
                    headers={"Retry-After": str(retry)},
                    queued_jobs=waiting,
                    max_queued_jobs=policy.max_queued_jobs,
                    reason=QUEUE,
                )
        rate = policy.rate_per_s
        if rate is not None:
            now = time.monotonic()
            tokens, when = self._buckets.get(tenant, (float(policy.rate_burst), now))
            tokens = min(float(policy.rate_burst), tokens + (now - when) * rate)
            if tokens < n:
                retry = self._hint((n - tokens) / rate if n <= policy.rate_burst else None)
                self._buckets[tenant] = (tokens, now)
                self._throttled(tenant, RATE)
                raise Problem(
                    429,
                    "Rate limit",
                    f"at most {rate:g} jobs per second (bursts of {policy.rate_burst}); retry in about {retry}s",
                    headers={"Retry-After": str(retry)},
                    rate_per_s=rate,
                    rate_burst=policy.rate_burst,
                    reason=RATE,
                )
            self._buckets[tenant] = (tokens - n, now)

    def _hint(self, seconds: float | None) -> int:
        if seconds is None:
            return min(self._config.retry_after_s, self._config.retry_after_max_s)
        return max(1, min(self._config.retry_after_max_s, math.ceil(seconds)))

    def _throttled(self, tenant: str, reason: str) -> None:
        counts = self.throttled.setdefault(tenant, {QUEUE: 0, RATE: 0})
        counts[reason] += 1
        metrics.throttled(tenant, reason)
