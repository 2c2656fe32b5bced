"""montecarlo.var against the analytic Gaussian VaR and ES, its determinism and its validation."""

from math import sqrt
from statistics import NormalDist

import numpy as np
import pytest
from pydantic import ValidationError

from calculations import registry
from calculations.montecarlo import VarParams
from processors.executor import run_batch

CALC = registry.get("montecarlo.var")
STD = NormalDist()

PORTFOLIOS = {
    "one asset": dict(weights=[1.0], mu=[0.0004], cov=[[2.5e-4]]),
    "correlated": dict(
        weights=[0.5, 0.3, 0.2],
        mu=[0.001, 0.0005, -0.0002],
        cov=[[1e-4, 2e-5, -1e-5], [2e-5, 4e-5, 5e-6], [-1e-5, 5e-6, 9e-5]],
    ),
    "singular cov": dict(weights=[0.6, 0.4], mu=[0.0, 0.001], cov=[[1e-4, 1e-4], [1e-4, 1e-4]]),
    "long short": dict(weights=[1.5, -0.5], mu=[0.0003, 0.0001], cov=[[4e-4, 1e-4], [1e-4, 2.5e-4]]),
}


def job(portfolio="correlated", **overrides) -> dict:
    return {**PORTFOLIOS[portfolio], "horizon_days": 10, "paths": 1_000_000, "confidence": 0.99, "seed": 1, **overrides}


def run(*jobs: dict, progress=lambda i, f: None) -> list[dict]:
    return CALC.fn([VarParams.model_validate(j) for j in jobs], progress)


def analytic(params: dict) -> tuple[float, float, float, float]:
    """Horizon mean and sigma of the portfolio return, Gaussian VaR and ES (positive losses)."""
    w, mu, cov, h = np.array(params["weights"]), np.array(params["mu"]), np.array(params["cov"]), params["horizon_days"]
    mean, sigma = h * w @ mu, sqrt(h * w @ cov @ w)
    tail = 1 - params["confidence"]
    z = STD.inv_cdf(tail)
    return mean, sigma, -(mean + sigma * z), sigma * STD.pdf(z) / tail - mean


def standard_errors(params: dict, sigma: float) -> tuple[float, float]:
    """Asymptotic standard errors of the sample quantile and of the tail mean below it."""
    n, tail = params["paths"], 1 - params["confidence"]
    z = STD.inv_cdf(tail)
    quantile_se = sqrt(tail * (1 - tail) / n) / STD.pdf(z) * sigma
    tail_mean = -STD.pdf(z) / tail  # E[Z | Z <= z] and Var[Z | Z <= z] for a standard normal
    tail_var = 1 + z * tail_mean - tail_mean**2
    es_se = sqrt((tail_var + (1 - tail) * (tail_mean - z) ** 2) / (n * tail)) * sigma
    return quantile_se, es_se


@pytest.mark.parametrize("portfolio", PORTFOLIOS)
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_var_and_cvar_agree_with_the_gaussian_formulas(portfolio, confidence):
    params = job(portfolio, confidence=confidence, seed=11)
    (result,) = run(params)
    mean, sigma, var, es = analytic(params)
    var_se, es_se = standard_errors(params, sigma)
    assert result["paths"] == 1_000_000
    assert result["var"] == pytest.approx(var, abs=5 * var_se)
    assert result["cvar"] == pytest.approx(es, abs=5 * es_se)
    assert result["mean_return"] == pytest.approx(mean, abs=5 * sigma / sqrt(params["paths"]))
    assert result["cvar"] > result["var"]


def test_the_same_seed_gives_the_same_result_and_another_seed_does_not():
    assert run(job(seed=5)) == run(job(seed=5))
    assert run(job(seed=5)) != run(job(seed=6))


def test_a_result_does_not_depend_on_the_batch_it_runs_in():
    alone = run(job(seed=3))[0]
    batch = run(job("one asset", seed=3), job(seed=9), job(seed=3), job("singular cov", paths=10, seed=0))
    assert batch[2] == alone
    assert batch[0] != alone  # the same seed on another portfolio is another result


def test_progress_is_per_job_monotonic_and_ends_at_one():
    reports: dict[int, list[float]] = {0: [], 1: []}
    run(job("one asset", paths=2_500_000), job(paths=7), progress=lambda i, f: reports[i].append(f))
    assert reports[0] == pytest.approx([0.4, 0.8, 1.0])  # one report per chunk of 1,000,000 paths
    assert reports[1] == [1.0]


def test_a_tiny_horizon_and_path_count_still_work():
    (result,) = run(job(paths=1, horizon_days=1))
    assert result["paths"] == 1
    assert result["var"] == result["cvar"] == -result["mean_return"]


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"mu": [0.0, 0.0]}, "mu", "mu has 2 entries, weights has 3"),
        ({"cov": [[1e-4, 0.0], [0.0, 1e-4]]}, "cov", "cov has 2 entries"),
        ({"cov": [[1e-4, 0, 0], [0, 1e-4], [0, 0, 1e-4]]}, "cov", "square"),
        ({"cov": [[1e-4, 1e-5, 0], [0, 1e-4, 0], [0, 0, 1e-4]]}, "cov", "symmetric"),
        ({"cov": [[1e-4, 2e-4, 0], [2e-4, 1e-4, 0], [0, 0, 1e-4]]}, "cov", "positive semi-definite"),
        ({"cov": [[-1e-4, 0, 0], [0, 1e-4, 0], [0, 0, 1e-4]]}, "cov", "positive semi-definite"),
        ({"confidence": 0.5}, "confidence", ""),
        ({"confidence": 1.0}, "confidence", ""),
        ({"confidence": 0.3}, "confidence", ""),
        ({"paths": 10_000_001}, "paths", ""),
        ({"paths": 0}, "paths", ""),
        ({"horizon_days": 0}, "horizon_days", ""),
        ({"horizon_days": 3651}, "horizon_days", ""),
        ({"seed": -1}, "seed", ""),
        ({"weights": [], "mu": [], "cov": []}, "weights", ""),
        ({"weights": [1.0] * 101}, "weights", ""),
        ({"weights": [float("nan"), 0.5, 0.5]}, "weights.0", ""),
        ({"extra": True}, "extra", ""),
    ],
)
def test_invalid_params_name_the_field(overrides, field, message):
    with pytest.raises(ValidationError) as info:
        VarParams.model_validate(job(**overrides))
    errors = {".".join(str(p) for p in e["loc"]): e["msg"] for e in info.value.errors()}
    assert field in errors
    assert message in errors[field]


def test_run_batch_fails_only_the_invalid_job():
    good, bad = job(paths=1000), job(paths=10_000_001)
    outcomes = run_batch("montecarlo.var", ["a", "b"], [good, bad])
    assert outcomes[0].ok and outcomes[0].result == run(good)[0]
    assert not outcomes[1].ok and outcomes[1].error["type"] == "invalid_params"
