"""``stats.describe``: count, mean, population std, min, max and percentiles.

Vectorised across the batch: jobs whose samples have the same length are
stacked into one 2-D array and reduced along axis 1 in one numpy call each.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from calculations.registry import Progress, calculation

MAX_VALUES = 1_000_000
PERCENTILES = (50, 90, 99)

# strict: a JSON number (an integer is fine), never true/false or "1"
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class Generate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    distribution: Literal["normal", "uniform"]
    n: int = Field(ge=1, le=MAX_VALUES)
    seed: int = Field(ge=0, le=2**63 - 1)


class DescribeParams(BaseModel):
    """Either ``values`` (1 to 1,000,000 finite numbers) or ``generate`` (a seeded sample)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # fail_fast: a million bad values give one error, not a million (the API answers in bounded time)
    values: list[FiniteFloat] | None = Field(default=None, min_length=1, max_length=MAX_VALUES, fail_fast=True)
    generate: Generate | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DescribeParams:
        if (self.values is None) == (self.generate is None):
            raise ValueError("give exactly one of 'values' or 'generate'")
        return self

    def sample(self) -> np.ndarray:
        if self.values is not None:
            return np.asarray(self.values, dtype=np.float64)
        assert self.generate is not None
        rng = np.random.default_rng(self.generate.seed)
        if self.generate.distribution == "normal":
            return rng.standard_normal(self.generate.n)
        return rng.random(self.generate.n)


def describe_rows(samples: np.ndarray) -> list[dict[str, float]]:
    """Describe each row of a 2-D array (one job per row)."""
    q = np.percentile(samples, PERCENTILES, axis=1)
    stats = {
        "count": np.full(samples.shape[0], samples.shape[1]),
        "mean": samples.mean(axis=1),
        "std": samples.std(axis=1),
        "min": samples.min(axis=1),
        "max": samples.max(axis=1),
        **{f"p{p}": q[i] for i, p in enumerate(PERCENTILES)},
    }
    return [
        {name: (int(col[row]) if name == "count" else float(col[row])) for name, col in stats.items()}
        for row in range(samples.shape[0])
    ]


@calculation("stats.describe", version="1", params=DescribeParams, deterministic=True)
def describe(batch: Sequence[DescribeParams], progress: Progress) -> list[dict[str, float]]:
    """Summary statistics of a sample (numpy's linear percentiles, population std)."""
    results: list[dict[str, float] | None] = [None] * len(batch)
    groups: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for index, params in enumerate(batch):
        sample = params.sample()
        groups[sample.size].append((index, sample))
        progress(index, 0.5)
    for members in groups.values():
        stacked = np.stack([sample for _, sample in members])
        for (index, _), row in zip(members, describe_rows(stacked), strict=False):
            results[index] = row
    return results  # type: ignore[return-value]  # every slot is filled by the loop above
