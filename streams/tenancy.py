"""What one tenant may use: its share of a busy worker and its admission limits.

The defaults and the per-tenant overrides are settings (``JOBSTREAM_TENANT_*``); the API reads
the admission limits, the workers read the weights. Tenants are the names the API keys give
(``default`` without keys).
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.settings import Settings


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    weight: float
    max_queued_jobs: int
    rate_per_s: float | None  #: None: no rate limit
    rate_burst: int


@dataclass(frozen=True)
class TenantPolicies:
    default: TenantPolicy
    overrides: dict[str, TenantPolicy]

    @classmethod
    def from_settings(cls, settings: Settings) -> TenantPolicies:
        default = TenantPolicy(
            settings.tenant_weight,
            settings.tenant_max_queued_jobs,
            settings.tenant_rate_per_s,
            settings.tenant_rate_burst,
        )
        overrides = {
            tenant: TenantPolicy(
                o.weight if o.weight is not None else default.weight,
                o.max_queued_jobs if o.max_queued_jobs is not None else default.max_queued_jobs,
                o.rate_per_s if o.rate_per_s is not None else default.rate_per_s,
                o.rate_burst if o.rate_burst is not None else default.rate_burst,
            )
            for tenant, o in settings.tenant_overrides.items()
        }
        return cls(default, overrides)

    def of(self, tenant: str) -> TenantPolicy:
        return self.overrides.get(tenant, self.default)
