"""A shortcut for the API's hottest request, ``POST /v1/jobs``, past FastAPI's routing.

A pure ASGI middleware that calls ``routes.submit`` directly, skipping route matching and
dependency solving (see docs/benchmarks.md, "Ingest API"). The body limit and 500 handler
still apply, ``Problem`` becomes the same problem+json, and the FastAPI route stays
registered: it documents the operation and serves whatever the shortcut does not match.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.metrics import ROUTE_KEY
from edge.problems import Problem, problem_response
from ingest_api.routes import submit


class SubmitShortcut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/v1/jobs"
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            return await self.app(scope, receive, send)
        scope[ROUTE_KEY] = "/v1/jobs"
        try:
            response = await submit(Request(scope, receive))
        except Problem as exc:
            response = problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extensions)
        await response(scope, receive, send)
