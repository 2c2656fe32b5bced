"""The calculations that ship with jobstream (importing this registers them)."""

from processors.calculations import stats  # noqa: F401
