"""A shortcut for the API's hottest request, ``POST /v1/jobs``, past FastAPI's routing.

``routes.submit`` takes the bare ``Request`` and reads body, headers and tenant
itself, so it needs nothing from FastAPI's dependency machinery. Calling it from
this pure ASGI middleware skips route matching, the request handler, dependency
solving and two more middleware layers: about half of a submit's in-process CPU
(docs/benchmarks.md, "Ingest API"). Everything outside still applies (the
body limit, the 500 handler), ``Problem`` becomes the same problem+json as
everywhere, and the FastAPI route stays registered: it documents the operation
in OpenAPI and serves the request whenever the shortcut does not match (e.g. a
``root_path``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.problems import Problem, problem_response
from ingest_api.routes import submit


class SubmitShortcut:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/jobs" or scope["method"] != "POST" or scope.get("root_path"):
            return await self.app(scope, receive, send)
        try:
            response = await submit(Request(scope, receive))
        except Problem as exc:
            response = problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extensions)
        await response(scope, receive, send)
