"""``jobstream serve`` with sse-starlette's ``EventSourceResponse`` behind the gateway's streams.

Only for ``bench.sse_bench --response sse-starlette``, in the bench's gateway process: the
product keeps its lean response (sse_gateway/sse.py). The streams' frames (events, heartbeats,
control frames) are the same bytes; sse-starlette sends them with its own task group, per-send
timeout and disconnect listener. Needs ``pip install sse-starlette`` (not a project dependency).

    python -m bench.sse_starlette_gateway serve --role gateway ...
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from sse_starlette import EventSourceResponse
from starlette.types import Message, Receive, Scope, Send

from sse_gateway import routes
from sse_gateway.sse import HEADERS, SendWatchdog


class StarletteEventStream(EventSourceResponse):
    """The lean response's contract (``on_disconnect``, ``on_close`` once on every exit, frames closed)
    on sse-starlette; its own keep-alive ping is off because the frames carry heartbeats."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        watchdog: SendWatchdog,
        on_disconnect: Callable[[], None],
        on_close: Callable[[], None],
    ) -> None:
        async def disconnected(_message: Message) -> None:
            on_disconnect()

        super().__init__(
            frames, headers=HEADERS, ping=0, send_timeout=watchdog.timeout_s, client_close_handler_callable=disconnected
        )
        self._frames = frames
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._frames.aclose()  # type: ignore[attr-defined]
            finally:
                self._on_close()


def main() -> None:
    routes.EventStreamResponse = StarletteEventStream  # type: ignore[misc,assignment]
    from jobstream.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
