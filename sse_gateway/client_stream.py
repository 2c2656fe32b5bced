"""What every client stream shares: its subscription to the fanout, how it is closed, its wire
``Format`` (SSE or WebSocket), and the hint that rides on its first data piece. ``JobStream`` and
``TenantStream`` build on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic

from sse_gateway.fanout import Fanout
from sse_gateway.formats import Format, P
from sse_gateway.reasons import CloseReason
from sse_gateway.subscriptions import Subscription
from store.clickhouse import ClickHouseStore
from streams.settings import Settings


@dataclass(frozen=True)
class StreamConfig:
    """What one client's stream needs of the settings: history waits, the resume cap, the retry hint."""

    retry_after_s: int  #: ``Retry-After`` when the history is not there yet
    catchup_wait_s: float
    history_wait_s: float
    history_poll_s: float
    resume_max_events: int

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamConfig:
        return cls(
            retry_after_s=settings.retry_after_s,
            catchup_wait_s=settings.sse_catchup_wait_s,
            history_wait_s=settings.sse_history_wait_s,
            history_poll_s=settings.sse_history_poll_s,
            resume_max_events=settings.sse_resume_max_events,
        )


class ClientStream(Generic[P]):
    """One client's stream: ``open()``, then ``frames()``; ``close()`` from anywhere, any number of times."""

    def __init__(
        self, fanout: Fanout, store: ClickHouseStore, config: StreamConfig, tenant: str, fmt: Format[P]
    ) -> None:
        self.fanout = fanout
        self.store = store
        self.config = config
        self.tenant = tenant
        self.fmt = fmt
        self.sub: Subscription | None = None
        self._hinted = False

    def frames(self) -> AsyncIterator[list[P]]:
        """The stream: chunks of pieces (an SSE body write, or one WebSocket message per piece)."""
        raise NotImplementedError

    def close(self, reason: CloseReason = CloseReason.CLIENT_DISCONNECTED) -> None:
        if self.sub is not None:
            self.sub.close(reason)
            self.fanout.unsubscribe(self.sub)

    @property
    def reason(self) -> CloseReason | None:
        """Why the stream's subscription closed (None: it is open, or the stream ended by itself)."""
        return self.sub.reason if self.sub is not None else None

    def _first(self, chunk: list[P]) -> list[P]:
        """Put the format's hint (SSE's ``retry:``) on the first piece that carries data (a frame of its
        own would show up as an empty event in some clients)."""
        if not self._hinted and chunk:
            self._hinted = True
            chunk[0] = self.fmt.hinted(chunk[0])
        return chunk

    def _goodbye(self, sub: Subscription) -> list[P]:
        """The last piece of a stream whose subscription was closed: why (nothing if the client left)."""
        assert sub.reason is not None
        piece = self.fmt.disconnect(sub.reason)
        return self._first([piece]) if piece is not None else []

    def _optional(self, piece: P | None) -> list[P]:
        return [piece] if piece is not None else []
