"""Tenant policies: defaults, per-tenant overrides from the environment, and the round trip to a child."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from streams.settings import Settings
from streams.tenancy import TenantPolicies


def test_defaults_apply_to_every_tenant_without_an_override() -> None:
    policies = TenantPolicies.from_settings(Settings(tenant_weight=2.0, tenant_max_queued_jobs=50))
    policy = policies.of("anyone")
    assert (policy.weight, policy.max_queued_jobs, policy.rate_per_s) == (2.0, 50, None)


def test_overrides_from_the_environment_replace_only_what_they_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBSTREAM_TENANT_OVERRIDES", '{"acme": {"weight": 3, "rate_per_s": 5}}')
    monkeypatch.setenv("JOBSTREAM_TENANT_MAX_QUEUED_JOBS", "70")
    settings = Settings()
    acme = TenantPolicies.from_settings(settings).of("acme")
    assert (acme.weight, acme.max_queued_jobs, acme.rate_per_s, acme.rate_burst) == (3.0, 70, 5.0, 100)
    assert TenantPolicies.from_settings(settings).of("other").weight == 1.0


@pytest.mark.parametrize(
    "overrides",
    [
        '{"acme": {"weight": 0}}',
        '{"acme": {"weight": "x"}}',
        '{"acme": {"speed": 1}}',
        '{"acme": {"max_queued_jobs": -1}}',
    ],
)
def test_bad_overrides_are_refused_at_start(monkeypatch: pytest.MonkeyPatch, overrides: str) -> None:
    monkeypatch.setenv("JOBSTREAM_TENANT_OVERRIDES", overrides)
    with pytest.raises(ValidationError):
        Settings()


def test_overrides_reach_a_child_process_through_env(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(tenant_overrides={"acme": {"weight": 4, "rate_burst": 9}})
    env = settings.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child.tenant_overrides == settings.tenant_overrides
    assert TenantPolicies.from_settings(child).of("acme").rate_burst == 9
