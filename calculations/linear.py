"""``linear.fit``: ordinary least squares, with or without an intercept.

Vectorised across the batch: jobs whose design matrices have the same shape are
stacked and solved with one batched SVD, the way ``np.linalg.lstsq`` solves one
(same default cutoff for small singular values, so rank-deficient and
underdetermined problems get lstsq's minimum-norm solution too).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from calculations.registry import Progress, calculation

MAX_ROWS = 1_000_000
MAX_COLUMNS = 100

# strict: a JSON number (an integer is fine), never true/false or "1"
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Row = Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_COLUMNS, fail_fast=True)]


class FitParams(BaseModel):
    """``y ≈ x @ coef (+ intercept)`` for an n×k ``x`` and n ``y``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # fail_fast: one error for a bad list, however long (the API answers in bounded time)
    x: list[Row] = Field(min_length=1, max_length=MAX_ROWS, fail_fast=True)
    y: list[FiniteFloat] = Field(min_length=1, max_length=MAX_ROWS, fail_fast=True)
    intercept: bool = True

    @field_validator("x")
    @classmethod
    def _rectangular(cls, x: list[list[float]]) -> list[list[float]]:
        for i, row in enumerate(x):
            if len(row) != len(x[0]):
                raise ValueError(f"x must be rectangular: row {i} has {len(row)} columns, row 0 has {len(x[0])}")
        return x

    @field_validator("y")
    @classmethod
    def _one_per_row(cls, y: list[float], info: ValidationInfo) -> list[float]:
        x = info.data.get("x")  # absent when x itself failed validation
        if x is not None and len(y) != len(x):
            raise ValueError(f"y has {len(y)} values, x has {len(x)} rows")
        return y

    def design(self) -> np.ndarray:
        x = np.asarray(self.x, dtype=np.float64)
        return np.hstack([np.ones((len(x), 1)), x]) if self.intercept else x


def lstsq_stacked(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``np.linalg.lstsq(a[i], y[i], rcond=None)[0]`` for every i of a (b, n, p) stack."""
    u, s, vt = np.linalg.svd(a, full_matrices=False)
    cutoff = np.finfo(np.float64).eps * max(a.shape[1:]) * s[:, :1]
    inverse = np.divide(1.0, s, out=np.zeros_like(s), where=s > cutoff)
    uty = np.einsum("bnr,bn->br", u, y)
    return np.einsum("brp,br->bp", vt, inverse * uty)


def fit_stacked(a: np.ndarray, y: np.ndarray, intercept: np.ndarray) -> list[dict]:
    """Fit each (a[i], y[i]); ``intercept[i]`` says whether a[i]'s first column is the ones column."""
    coef = lstsq_stacked(a, y)
    ss_res = ((y - np.einsum("bnp,bp->bn", a, coef)) ** 2).sum(axis=1)
    centre = np.where(intercept, y.mean(axis=1), 0.0)
    ss_tot = ((y - centre[:, None]) ** 2).sum(axis=1)
    # ss_tot == 0 means y is constant (zero without intercept): the fit reproduces it exactly,
    # so r2 is 1 even when rounding leaves ss_res a hair above 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(ss_tot > 0, 1 - ss_res / ss_tot, 1.0)
    n, p = a.shape[1:]
    residual_std = np.sqrt(ss_res / max(n - p, 1))
    return [
        {
            "coef": coef[i, 1:].tolist() if intercept[i] else coef[i].tolist(),
            "intercept": float(coef[i, 0]) if intercept[i] else 0.0,
            "r2": float(r2[i]),
            "residual_std": float(residual_std[i]),
        }
        for i in range(len(a))
    ]


@calculation("linear.fit", version="1", params=FitParams, deterministic=True)
def fit(batch: Sequence[FitParams], progress: Progress) -> list[dict]:
    """Least-squares coefficients, R² and residual standard error (matches np.linalg.lstsq)."""
    results: list[dict | None] = [None] * len(batch)
    groups: dict[tuple[int, ...], list[tuple[int, np.ndarray]]] = defaultdict(list)
    for index, params in enumerate(batch):
        design = params.design()
        groups[design.shape].append((index, design))
    for members in groups.values():
        indices = [index for index, _ in members]
        a = np.stack([design for _, design in members])
        y = np.array([batch[i].y for i in indices], dtype=np.float64)
        intercept = np.array([batch[i].intercept for i in indices])
        for index, result in zip(indices, fit_stacked(a, y, intercept), strict=False):
            results[index] = result
            progress(index, 1.0)
    return results  # type: ignore[return-value]  # every slot is filled by the loop above
