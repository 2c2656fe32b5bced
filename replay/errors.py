"""Why a replay cannot be planned, started or resumed; the routes map each kind to an HTTP status."""

from __future__ import annotations

from streams.errors import JobstreamError


class ReplayError(JobstreamError):
    """A replay request that cannot be planned or run; ``field`` names the culprit."""

    def __init__(self, title: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.title = title
        self.detail = detail
        self.field = field


class ReplayRefused(ReplayError):
    """The selection or rate cannot be planned as asked (unknown kind or version, too many jobs)."""


class ReplayConflict(ReplayError):
    """The replay's state does not allow it now (running, completed, only planned)."""
