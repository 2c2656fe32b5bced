"""What every client stream shares: its subscription to the fanout, how it is closed, and the
``retry:`` hint that rides on its first data frame. ``JobStream`` and ``TenantStream`` build on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from sse_gateway.fanout import Fanout
from sse_gateway.reasons import CloseReason
from sse_gateway.sse import control_frame
from sse_gateway.subscriptions import Subscription
from store.clickhouse import ClickHouseStore
from streams.settings import Settings


@dataclass(frozen=True)
class StreamConfig:
    """What one client's stream needs of the settings: history waits, resume cap, retry hints."""

    retry_ms: int  #: the SSE ``retry:`` hint
    retry_after_s: int  #: ``Retry-After`` when the history is not there yet
    catchup_wait_s: float
    history_wait_s: float
    history_poll_s: float
    resume_max_events: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamConfig:
        return cls(
            retry_ms=settings.sse_retry_ms,
            retry_after_s=settings.retry_after_s,
            catchup_wait_s=settings.sse_catchup_wait_s,
            history_wait_s=settings.sse_history_wait_s,
            history_poll_s=settings.sse_history_poll_s,
            resume_max_events=settings.sse_resume_max_events,
        )


class ClientStream:
    """One client's stream: ``open()``, then ``frames()``; ``close()`` from anywhere, any number of times."""

    def __init__(self, fanout: Fanout, store: ClickHouseStore, config: StreamConfig, tenant: str) -> None:
        self.fanout = fanout
        self.store = store
        self.config = config
        self.tenant = tenant
        self.sub: Subscription | None = None
        self._retry_line = b"retry: %d\n" % config.retry_ms

    def frames(self) -> AsyncIterator[bytes]:
        """The response body: chunks of SSE frames."""
        raise NotImplementedError

    def close(self, reason: CloseReason = CloseReason.CLIENT_DISCONNECTED) -> None:
        if self.sub is not None:
            self.sub.close(reason)
            self.fanout.unsubscribe(self.sub)

    def _first(self, chunk: bytes) -> bytes:
        """Put the ``retry:`` hint on the first frame that carries data (a frame of its own would
        show up as an empty event in some clients)."""
        line, self._retry_line = self._retry_line, b""
        return line + chunk

    def _goodbye(self, sub: Subscription) -> bytes:
        """The last frame of a stream whose subscription was closed: why (nothing if the client left)."""
        if sub.reason == CloseReason.CLIENT_DISCONNECTED:
            return b""
        return self._first(control_frame("disconnect", {"reason": sub.reason, "resume": True}))
