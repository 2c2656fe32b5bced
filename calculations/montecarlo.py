"""``montecarlo.var``: Monte Carlo value at risk and expected shortfall of a portfolio.

Daily asset returns are multivariate normal and i.i.d. across days, so the
horizon return vector is normal with mean ``h*mu`` and covariance ``h*cov``.
Each job draws its own paths from ``Generator(seed)``: jobs never share a random
stream, so a result depends only on its own params, never on the batch it came
in. The work per job is vectorised over chunks of paths (bounded memory).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from calculations.registry import Progress, calculation

MAX_ASSETS = 100
MAX_PATHS = 10_000_000
CHUNK_PATHS = 1_000_000
CHUNK_NORMALS = 8_000_000  # at most 64 MB of standard normals per chunk
JITTER = 1e-10  # relative to the largest |cov| entry; lets Cholesky factor singular PSD matrices

# strict: a JSON number (an integer is fine), never true/false or "1"
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


def _expected_size(info: ValidationInfo, name: str, size: int) -> None:
    weights = info.data.get("weights")  # absent when weights itself failed validation
    if weights is not None and size != len(weights):
        raise ValueError(f"{name} has {size} entries, weights has {len(weights)}")


class VarParams(BaseModel):
    """A portfolio (weights, daily mu and cov) and the simulation to run on it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    weights: list[FiniteFloat] = Field(min_length=1, max_length=MAX_ASSETS)
    # fail_fast: one error for a bad list, however long (the API answers in bounded time)
    mu: list[FiniteFloat] = Field(fail_fast=True)
    cov: list[Annotated[list[FiniteFloat], Field(fail_fast=True)]] = Field(fail_fast=True)
    horizon_days: int = Field(ge=1, le=3650)
    paths: int = Field(ge=1, le=MAX_PATHS)
    confidence: float = Field(gt=0.5, lt=1)
    seed: int = Field(ge=0, le=2**63 - 1)

    @field_validator("mu")
    @classmethod
    def _mu_matches_weights(cls, mu: list[float], info: ValidationInfo) -> list[float]:
        _expected_size(info, "mu", len(mu))
        return mu

    @field_validator("cov")
    @classmethod
    def _cov_is_psd(cls, cov: list[list[float]], info: ValidationInfo) -> list[list[float]]:
        _expected_size(info, "cov", len(cov))
        if any(len(row) != len(cov) for row in cov):
            raise ValueError("cov must be a square matrix")
        matrix = np.asarray(cov, dtype=np.float64)
        if np.abs(matrix - matrix.T).max(initial=0.0) > 1e-12 * _scale(matrix):
            raise ValueError("cov must be symmetric")
        try:
            _cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ValueError("cov must be positive semi-definite") from None
        return cov

    def factor(self) -> np.ndarray:
        """Lower-triangular L with L Lᵀ = cov (up to the jitter)."""
        return _cholesky(np.asarray(self.cov, dtype=np.float64))


def _scale(matrix: np.ndarray) -> float:
    return float(np.abs(matrix).max(initial=0.0)) or 1.0


def _cholesky(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.cholesky(matrix + JITTER * _scale(matrix) * np.eye(len(matrix)))


def simulate(params: VarParams, on_chunk: Callable[[int], None]) -> np.ndarray:
    """Portfolio returns over the horizon, one per path.

    Path i's asset returns are ``h*mu + sqrt(h) * L z_i`` with z_i standard
    normal; projected onto w that is ``h*w·mu + z_i·(sqrt(h) Lᵀw)``, so the
    n×n product is done once, not once per path.
    """
    h, w = params.horizon_days, np.asarray(params.weights)
    loading = np.sqrt(h) * params.factor().T @ w
    mean = h * float(w @ np.asarray(params.mu))
    rng = np.random.default_rng(params.seed)
    chunk = max(1, min(CHUNK_PATHS, CHUNK_NORMALS // w.size))
    returns = np.empty(params.paths)
    for start in range(0, params.paths, chunk):
        stop = min(start + chunk, params.paths)
        returns[start:stop] = rng.standard_normal((stop - start, w.size)) @ loading + mean
        on_chunk(stop)
    return returns


def _report(progress: Progress, index: int, paths: int, done: int) -> None:
    progress(index, done / paths)


@calculation("montecarlo.var", version="1", params=VarParams, deterministic=True)
def var(batch: Sequence[VarParams], progress: Progress) -> list[dict[str, float]]:
    """Monte Carlo VaR and CVaR (as positive loss fractions) of a normal portfolio."""
    results = []
    for index, params in enumerate(batch):
        returns = simulate(params, partial(_report, progress, index, params.paths))
        cutoff = np.quantile(returns, 1 - params.confidence)
        results.append(
            {
                "var": float(-cutoff),
                "cvar": float(-returns[returns <= cutoff].mean()),
                "mean_return": float(returns.mean()),
                "paths": params.paths,
            }
        )
    return results
