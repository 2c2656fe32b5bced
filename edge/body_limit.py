"""The request-body limits every HTTP route shares: size (413) and arrival time (408)."""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect

from edge import problems
from streams.errors import JobstreamError

logger = logging.getLogger(__name__)


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, declared or streamed; 408 when the next
    part of a body does not arrive within ``timeout_s`` (a client that declared a Content-Length
    larger than what it sends would otherwise hold the request until it gives up).

    Pure ASGI (not BaseHTTPMiddleware) so SSE responses stream untouched; the timeout applies only
    while a body is still expected, never to a stream waiting for its client to disconnect.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float = 10.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        seen = 0
        body_done = False
        started = False

        async def counted_receive():
            nonlocal seen, body_done
            if body_done:
                return await receive()
            try:  # asyncio.timeout, not wait_for: wait_for costs a task per receive on 3.11
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
            except TimeoutError:
                raise _BodyTimeout() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
                body_done = not message.get("more_body", False)
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._too_large(scope, receive, send)
        except _BodyTimeout:
            if not started:
                await self._timed_out(scope, receive, send)
        except ClientDisconnect:
            if started:
                raise
            # the client left before its body was read: nobody to answer, nothing accepted, not an error
            logger.debug("%s %s: the client left before its body was read", scope["method"], scope["path"])

    async def _too_large(self, scope, receive, send):
        response = problems.problem_response(
            413, "Body too large", f"the limit is {self.max_bytes} bytes", limit_bytes=self.max_bytes
        )
        await response(scope, receive, send)

    async def _timed_out(self, scope, receive, send):
        response = problems.problem_response(
            408,
            "Request timeout",
            f"the request body did not arrive within {self.timeout_s:g}s",
            headers={"Connection": "close"},
            timeout_s=self.timeout_s,
        )
        await response(scope, receive, send)


class _TooLarge(JobstreamError):
    """The body outgrew the limit (control flow inside the middleware)."""


class _BodyTimeout(JobstreamError):
    """The body did not arrive in time (control flow inside the middleware)."""
