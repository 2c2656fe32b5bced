"""The calculations that ship with jobstream (importing this registers them)."""

from calculations import linear, montecarlo, stats  # noqa: F401
