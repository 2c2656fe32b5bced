"""Pure limits of the ingest API (no broker): Retry-After stays a small polling hint, the errors a
422 lists are capped, and a calculation whose result overflows fails instead of succeeding with nulls."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge.problems import validation_errors
from ingest_api.backpressure import LagConfig, LagMonitor, retry_after_s
from ingest_api.submit import JobSubmission
from processors.executor import run_batch
from streams.settings import Settings
from tests.support.calcs import OVERFLOWING


@pytest.mark.parametrize(
    "ahead, rate, expected",
    [
        (0, 0.0, 1),  # nothing measured yet: the default
        (100, 0.0, 1),
        (100, 50.0, 2),
        (1, 1e-9, 30),  # an idle service: the smoothed rate decays toward 0, the hint must not grow with it
        (10**9, 1.0, 30),
        (1, 1000.0, 1),
    ],
)
def test_retry_after_is_capped_and_at_least_one(ahead: int, rate: float, expected: int):
    settings = Settings(retry_after_s=1, retry_after_max_s=30)
    assert retry_after_s(ahead, rate, LagConfig.from_settings(settings)) == expected


def test_an_idle_lag_monitor_hints_at_most_the_cap():
    monitor = LagMonitor.__new__(LagMonitor)  # no Kafka needed for the arithmetic
    monitor._config = LagConfig.from_settings(Settings(retry_after_max_s=7))
    monitor.lag, monitor.rate = 5, 1e-12
    assert monitor.retry_after_s() == 7


def test_validation_errors_are_capped_with_the_total_count():
    with pytest.raises(ValidationError) as caught:
        JobSubmission.model_validate({"kind": "k", "params": {}, **{f"x{i}": i for i in range(100)}})
    listed, total = validation_errors(caught.value, limit=20)
    assert total == 100 and len(listed) == 20 and listed[0]["field"] == "x0"


def test_strict_submission_types():
    for bad in ({"priority": True}, {"priority": "1"}, {"timeout_s": "10"}, {"timeout_s": False}):
        with pytest.raises(ValidationError):
            JobSubmission.model_validate({"kind": "k", "params": {}, **bad})
    assert JobSubmission.model_validate({"kind": "k", "params": {}, "timeout_s": 10}).timeout_s == 10


@pytest.mark.parametrize("kind, params", list(OVERFLOWING.items()))
def test_an_overflowing_result_is_a_calculation_error(kind: str, params: dict):
    outcome = run_batch(kind, ["j0", "j1"], [params, {"values": [1, 2]} if kind == "stats.describe" else params])[0]
    assert not outcome.ok and outcome.error["type"] == "calculation_error", outcome


def test_a_batch_with_one_overflowing_job_fails_only_that_job():
    outcomes = run_batch("stats.describe", ["j0", "j1"], [{"values": [1e308, 1e308]}, {"values": [1, 3]}])
    assert [o.ok for o in outcomes] == [False, True] and outcomes[1].result["mean"] == 2.0


def test_fingerprints_ignore_key_order_and_defaults_and_tell_bodies_apart():
    a = JobSubmission.model_validate({"kind": "k", "params": {"x": 1, "y": [1.5, 2]}})
    b = JobSubmission.model_validate({"params": {"y": [1.5, 2], "x": 1}, "kind": "k", "priority": 0})
    c = JobSubmission.model_validate({"kind": "k", "params": {"x": 2, "y": [1.5, 2]}})
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.fingerprint().startswith("v2:")
    assert b.matches(a.fingerprint()) and not c.matches(a.fingerprint())


def test_fingerprints_hash_ints_past_64_bits():
    big = JobSubmission.model_validate({"kind": "k", "params": {"n": 2**80}})
    other = JobSubmission.model_validate({"kind": "k", "params": {"n": 2**80 + 1}})
    assert big.fingerprint() != other.fingerprint() and big.matches(big.fingerprint())


def test_keys_stored_before_v2_fingerprints_still_match_their_body():
    import hashlib
    import json

    body = JobSubmission.model_validate({"kind": "k", "params": {"x": 1}})
    legacy = hashlib.sha256(
        # the body as it was dumped before the webhook, reuse and start_within_s fields existed
        json.dumps(
            body.model_dump(mode="json", exclude={"webhook", "webhook_events", "reuse", "start_within_s"}),
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()
    other = JobSubmission.model_validate({"kind": "k", "params": {"x": 2}})
    assert body.matches(legacy) and not other.matches(legacy)
