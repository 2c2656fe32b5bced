"""Version 2 of ``test.square``: the fixed calculation a replay re-runs history with (test-only).

A separate module, so a worker can run with version 1 alone (the buggy past) and then with both.
"""

from __future__ import annotations

from collections.abc import Sequence

from calculations.registry import Progress, calculation
from tests.calc_plugin import SquareParams


@calculation("test.square", version="2", params=SquareParams)
def square_v2(batch: Sequence[SquareParams], progress: Progress) -> list[dict]:
    """x squared (test-only)."""
    return [{"y": p.x * p.x} for p in batch]
