"""Test-only calculations that misbehave on purpose (loaded by workers via JOBSTREAM_PLUGINS).

``test.work`` runs its jobs one after another; each job's params say what to do:
sleep in steps reporting progress, sleep without progress points (``hang_s``),
kill its process (``crash``), raise an unexpected error (``explode``), fail
permanently (``reject``), or fail transiently until a counter file reaches
``flaky_times`` (the counter survives process restarts, so attempts are counted).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from calculations.registry import CalculationError, Progress, TransientError, calculation


class WorkParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: int = 0
    sleep_s: float = 0.0
    steps: int = 10
    hang_s: float = 0.0
    crash: bool = False
    explode: bool = False
    reject: bool = False
    flaky_times: int = 0
    counter: str | None = None
    group: str = ""


def _bump(counter: str) -> int:
    path = Path(counter)
    count = int(path.read_text() or 0) + 1 if path.exists() else 1
    path.write_text(str(count))
    return count


@calculation("test.work", version="1", params=WorkParams, batch_key=lambda raw: raw.get("group", ""))
def work(batch: Sequence[WorkParams], progress: Progress) -> list[dict]:
    """Does what each job's params say (test-only)."""
    results = []
    for index, params in enumerate(batch):
        progress(index, 0.0)
        if params.crash:
            os._exit(13)
        if params.explode:
            raise RuntimeError(f"job {index} exploded")
        if params.reject:
            raise CalculationError("rejected on purpose", index=index)
        if params.flaky_times and params.counter and _bump(params.counter) <= params.flaky_times:
            raise TransientError("flaky on purpose", index=index)
        if params.hang_s:
            time.sleep(params.hang_s)
        for step in range(params.steps if params.sleep_s else 0):
            time.sleep(params.sleep_s / params.steps)
            progress(index, (step + 1) / params.steps)
        results.append({"value": params.value, "pid": os.getpid(), "batch_size": len(batch)})
    return results


class SquareParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: float


@calculation("test.square", version="1", params=SquareParams)
def square_v1(batch: Sequence[SquareParams], progress: Progress) -> list[dict]:
    """x squared, with two bugs version 2 fixes: off by one past 5, refuses negatives (test-only)."""
    for index, p in enumerate(batch):
        if p.x < 0:
            raise CalculationError("negative x", index=index)
    return [{"y": p.x * p.x + (1 if p.x > 5 else 0)} for p in batch]


class CountedParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: float
    sleep_s: float = 0.0
    counter: str  # a file that gets one line per job calculated


@calculation("test.counted", version="1", params=CountedParams, deterministic=True)
def counted(batch: Sequence[CountedParams], progress: Progress) -> list[dict]:
    """x squared after sleep_s; appends a line to ``counter`` per job, so tests count calculations."""
    for p in batch:
        with open(p.counter, "a") as f:
            f.write("1\n")
    time.sleep(max((p.sleep_s for p in batch), default=0.0))
    return [{"y": p.x * p.x} for p in batch]
