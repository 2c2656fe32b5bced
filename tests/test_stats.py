"""stats.describe against numpy, and its parameter validation."""

import numpy as np
import pytest
from pydantic import ValidationError

from calculations import registry
from calculations.stats import DescribeParams
from processors.executor import run_batch

CALC = registry.get("stats.describe")


def expected(sample: np.ndarray) -> dict:
    p50, p90, p99 = np.percentile(sample, [50, 90, 99])
    return {
        "count": sample.size,
        "mean": sample.mean(),
        "std": sample.std(),
        "min": sample.min(),
        "max": sample.max(),
        "p50": p50,
        "p90": p90,
        "p99": p99,
    }


def assert_matches(result: dict, sample: np.ndarray) -> None:
    want = expected(sample)
    assert result.keys() == want.keys()
    for key, value in want.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_a_mixed_batch_matches_numpy_job_by_job():
    rng = np.random.default_rng(7)
    samples = [rng.normal(size=n) for n in (1, 5, 5, 1000, 5)]  # equal lengths are stacked together
    params = [DescribeParams(values=s.tolist()) for s in samples]
    results = CALC.fn(params, lambda i, f: None)
    for result, sample in zip(results, samples, strict=False):
        assert_matches(result, sample)


@pytest.mark.parametrize("distribution", ["normal", "uniform"])
def test_generate_is_seeded_and_matches_numpy(distribution):
    params = DescribeParams.model_validate({"generate": {"distribution": distribution, "n": 10_000, "seed": 42}})
    rng = np.random.default_rng(42)
    sample = rng.standard_normal(10_000) if distribution == "normal" else rng.random(10_000)
    assert_matches(CALC.fn([params], lambda i, f: None)[0], sample)


@pytest.mark.parametrize(
    "params,field",
    [
        ({}, ""),
        ({"values": []}, "values"),
        ({"values": [1, "x"]}, "values.1"),
        ({"values": [1], "generate": {"distribution": "normal", "n": 3, "seed": 1}}, ""),
        ({"generate": {"distribution": "cauchy", "n": 3, "seed": 1}}, "generate.distribution"),
        ({"generate": {"distribution": "normal", "n": 0, "seed": 1}}, "generate.n"),
        ({"generate": {"distribution": "normal", "n": 1_000_001, "seed": 1}}, "generate.n"),
        ({"values": [1], "extra": True}, "extra"),
    ],
)
def test_invalid_params_name_the_field(params, field):
    with pytest.raises(ValidationError) as info:
        DescribeParams.model_validate(params)
    fields = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert field in fields


def test_run_batch_fails_only_the_invalid_job():
    outcomes = run_batch("stats.describe", ["a", "b"], [{"values": [1, 2]}, {"values": []}])
    assert outcomes[0].ok and outcomes[0].result["mean"] == 1.5
    assert not outcomes[1].ok and outcomes[1].error["type"] == "invalid_params"


def test_unknown_kind_is_reported_not_raised():
    (outcome,) = run_batch("no.such", ["a"], [{}])
    assert not outcome.ok and outcome.error["type"] == "unknown_kind"
