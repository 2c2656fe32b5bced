"""Inputs the built-in calculations are tested with, shared by the unit and the HTTP tests."""

from __future__ import annotations

from typing import Any

#: Params whose results overflow (inf/nan): each must end as ``calculation_error``, never a success.
OVERFLOWING: dict[str, dict[str, Any]] = {
    "stats.describe": {"values": [1e308, 1e308]},
    "linear.fit": {"x": [[1e308], [-1e308], [1e307]], "y": [1e308, -1e308, 1e308]},
    "montecarlo.var": {
        "weights": [1e308],
        "mu": [1e308],
        "cov": [[1.0]],
        "horizon_days": 10,
        "paths": 100,
        "confidence": 0.9,
        "seed": 1,
    },
}
