"""linear.fit against np.linalg.lstsq, its R² and residual std, and its validation."""

import numpy as np
import pytest
from pydantic import ValidationError

from calculations import registry
from calculations.linear import FitParams
from processors.executor import run_batch

CALC = registry.get("linear.fit")


def problem(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k))
    return x, x @ rng.normal(size=k) + 3.0 + rng.normal(scale=0.5, size=n)


def run(*jobs: tuple[np.ndarray, np.ndarray, bool]) -> list[dict]:
    params = [FitParams(x=x.tolist(), y=y.tolist(), intercept=intercept) for x, y, intercept in jobs]
    return CALC.fn(params, lambda i, f: None)


def assert_matches(result: dict, x: np.ndarray, y: np.ndarray, intercept: bool) -> None:
    """Compare with lstsq, and R² / residual std computed directly from its residuals."""
    a = np.hstack([np.ones((len(x), 1)), x]) if intercept else x
    solution = np.linalg.lstsq(a, y, rcond=None)[0]
    residuals = y - a @ solution
    ss_res = residuals @ residuals
    ss_tot = ((y - y.mean()) ** 2).sum() if intercept else y @ y
    assert result["coef"] == pytest.approx(solution[1:] if intercept else solution, rel=1e-9, abs=1e-10)
    assert result["intercept"] == (pytest.approx(solution[0], rel=1e-9, abs=1e-10) if intercept else 0.0)
    assert result["r2"] == pytest.approx(1 - ss_res / ss_tot, rel=1e-9, abs=1e-10)
    assert result["residual_std"] == pytest.approx(np.sqrt(ss_res / max(len(x) - a.shape[1], 1)), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize("intercept", [True, False])
@pytest.mark.parametrize("n,k", [(200, 3), (10_000, 20), (2, 5), (1, 1)])
def test_matches_lstsq(n, k, intercept):
    x, y = problem(n, k)
    (result,) = run((x, y, intercept))
    assert len(result["coef"]) == k
    if n > 1 or not intercept:
        assert_matches(result, x, y, intercept)
    else:  # one point, intercept: fitted exactly, and y has no variance
        assert result["r2"] == 1.0 and result["residual_std"] == pytest.approx(0.0, abs=1e-12)


def test_a_rank_deficient_x_gets_lstsq_minimum_norm_solution():
    x, y = problem(50, 2)
    x = np.hstack([x, x[:, :1]])  # a repeated column
    (result,) = run((x, y, True))
    assert_matches(result, x, y, True)
    assert result["coef"][0] == pytest.approx(result["coef"][2])


def test_an_exact_fit_has_r2_one_and_no_residual_std():
    x = np.arange(10.0)[:, None]
    (result,) = run((x, 2 * x[:, 0] - 1, True))
    assert result["coef"] == pytest.approx([2.0]) and result["intercept"] == pytest.approx(-1.0)
    assert result["r2"] == pytest.approx(1.0) and result["residual_std"] == pytest.approx(0.0, abs=1e-12)


def test_r2_is_one_when_y_is_all_zero_without_intercept():
    (result,) = run((np.ones((4, 2)), np.zeros(4), False))
    assert result == {"coef": [0.0, 0.0], "intercept": 0.0, "r2": 1.0, "residual_std": 0.0}


def test_r2_is_one_for_a_constant_y_though_rounding_leaves_a_tiny_residual():
    x, _ = problem(5, 2)
    (result,) = run((x, np.full(5, 0.7), True))
    assert result["intercept"] == pytest.approx(0.7) and result["coef"] == pytest.approx([0, 0], abs=1e-12)
    assert result["r2"] == 1.0 and result["residual_std"] < 1e-12


def test_a_mixed_batch_matches_lstsq_job_by_job():
    jobs = [
        (*problem(100, 3, seed=1), True),
        (*problem(100, 4, seed=2), False),  # the same design shape as the first: solved in one stack
        (*problem(100, 3, seed=3), True),
        (*problem(7, 1, seed=4), True),
        (*problem(1000, 10, seed=5), False),
        (*problem(100, 3, seed=6), False),
    ]
    results = run(*jobs)
    assert len(results) == len(jobs)
    for result, (x, y, intercept) in zip(results, jobs, strict=False):
        assert_matches(result, x, y, intercept)


def test_a_result_does_not_depend_on_the_batch_it_runs_in():
    x, y = problem(100, 3, seed=8)
    alone = run((x, y, True))[0]
    assert run((*problem(100, 3, seed=9), True), (x, y, True))[1] == alone


@pytest.mark.parametrize(
    "params,field,message",
    [
        ({"x": [[1, 2], [3]], "y": [1, 2]}, "x", "x must be rectangular: row 1 has 1 columns, row 0 has 2"),
        ({"x": [[1], [2], [3]], "y": [1, 2]}, "y", "y has 2 values, x has 3 rows"),
        ({"x": [], "y": []}, "x", ""),
        ({"x": [[]], "y": [1]}, "x.0", ""),
        ({"x": [[1.0] * 101], "y": [1]}, "x.0", ""),
        ({"x": [[1, float("inf")]], "y": [1]}, "x.0.1", ""),
        ({"x": [[1], [2]], "y": [1, float("nan")]}, "y.1", ""),
        ({"x": [[1]], "y": [1], "intercept": "maybe"}, "intercept", ""),
        ({"x": [[1]], "y": [1], "extra": True}, "extra", ""),
    ],
)
def test_invalid_params_name_the_field(params, field, message):
    with pytest.raises(ValidationError) as info:
        FitParams.model_validate(params)
    errors = {".".join(str(p) for p in e["loc"]): e["msg"] for e in info.value.errors()}
    assert field in errors
    assert message in errors[field]


def test_run_batch_fails_only_the_invalid_job():
    outcomes = run_batch(
        "linear.fit", ["a", "b"], [{"x": [[0], [1], [2]], "y": [1, 3, 5]}, {"x": [[0], [1]], "y": [1]}]
    )
    assert outcomes[0].ok and outcomes[0].result["coef"] == pytest.approx([2.0])
    assert not outcomes[1].ok and outcomes[1].error["type"] == "invalid_params"
