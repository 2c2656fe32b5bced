"""``GET /metrics`` and the HTTP metrics every route shares: requests and durations by route template and status.

Pure ASGI (not BaseHTTPMiddleware) so SSE responses stream untouched. The route label is the
matched route's template (``/v1/jobs/{job_id}``), never the raw path: an unmatched path counts as
``unmatched``, so a scanner cannot grow the label set. A handler that bypasses routing (the submit
shortcut) names its template in ``scope[ROUTE_KEY]``.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from telemetry import metrics

ROUTE_KEY = "jobstream.route"
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The template of the route that served ``scope`` (after routing), else ``unmatched``."""
    named = scope.get(ROUTE_KEY)
    if named is not None:
        return str(named)
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class HttpMetrics:
    """Observes each answered request's time to its response headers (the histogram's _count counts them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        answered = False

        async def timed_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self._record(scope, message["status"], time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except Exception:  # the outermost error handler answers 500 after us: count it here
            if not answered:
                self._record(scope, 500, time.perf_counter() - started)
            raise

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        key = (scope["method"], route_of(scope), status)
        child = self._children.get(key)
        if child is None:  # bounded: methods × route templates × statuses
            child = self._children[key] = metrics.HTTP_DURATION.labels(key[0], key[1], str(status))
        child.observe(seconds)


async def _metrics(request: Request) -> Response:
    return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)


def install(app: FastAPI) -> None:
    """``GET /metrics`` (Prometheus text; unauthenticated, like /healthz: bind or firewall it as such)
    and the request metrics of every route."""
    app.add_route("/metrics", _metrics, methods=["GET"], include_in_schema=False)
    app.add_middleware(HttpMetrics)
