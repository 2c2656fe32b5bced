"""Cross-origin access for browser pages on other origins (an explicit allow-list, never ``*``)."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from streams.settings import Settings

CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"]
CORS_EXPOSED = ["Location", "Retry-After", "WWW-Authenticate"]


def install(app: FastAPI, settings: Settings) -> None:
    """CORS for the origins in ``JOBSTREAM_CORS_ORIGINS`` (none: off, so OPTIONS stays a 405).

    Outermost, so preflights are answered before any other middleware and every answer (problems
    included) carries the headers. Never with credentials: jobstream uses no cookies — a page sends
    the API key in ``Authorization`` (an allowed header, not a credential to CORS) and EventSource
    carries a stream token in the URL. Pure ASGI: streams pass through untouched.
    """
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials=False,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=CORS_HEADERS,
            expose_headers=CORS_EXPOSED,
            max_age=settings.cors_max_age_s,
        )
