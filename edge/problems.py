"""RFC 9457 problem details: every error the HTTP API returns looks like this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class ProblemDetails(BaseModel):
    """RFC 9457 problem details, as every error response of the API carries them."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[dict[str, str]] | None = Field(
        default=None, description="One entry per offending field (the first JOBSTREAM_MAX_LISTED_ERRORS)."
    )
    error_count: int | None = Field(default=None, description="How many errors there are in all.")


_DESCRIPTIONS = {
    400: "Malformed request (e.g. invalid JSON)",
    401: "Missing or unknown API key",
    404: "No such job (or another tenant's)",
    409: "Conflict with the job's state",
    408: "The request body did not arrive in time",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Invalid request",
    429: "Too many queued jobs or streams",
    503: "Not ready, too busy, or Kafka did not acknowledge in time (see 'outcome'); retry later",
}


def problem_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for ``statuses``."""
    schema = {"schema": ProblemDetails.model_json_schema()}
    return {
        status: {
            "description": descriptions.get(f"s{status}", _DESCRIPTIONS.get(status, "Error")),
            "content": {PROBLEM_JSON: schema},
        }
        for status in statuses
    }


class Problem(Exception):
    """Raise to answer with a problem+json body."""

    def __init__(
        self, status: int, title: str, detail: str = "", *, headers: dict[str, str] | None = None, **extensions: Any
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions


def problem_response(
    status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extensions: Any
) -> Response:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        **({"detail": detail} if detail else {}),
        **extensions,
    }
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


MAX_LISTED_ERRORS = 20  # JOBSTREAM_MAX_LISTED_ERRORS' default
# pydantic builds every error's dict at once (seconds for a million): past this many, name only the count.
_MAX_EXPANDED_ERRORS = 1000


def field_errors(
    errors: Sequence[Mapping[str, Any]], prefix: tuple[str, ...] = (), limit: int | None = None
) -> list[dict[str, str]]:
    """pydantic errors → ``[{"field": "params.values.3", "reason": "..."}]`` (the first ``limit``)."""
    out = []
    for error in errors[:limit]:
        loc = [str(part) for part in (*prefix, *error.get("loc", ())) if part != "body"]
        out.append({"field": ".".join(loc) or "(body)", "reason": error.get("msg", "invalid")})
    return out


def validation_errors(
    exc: ValidationError, prefix: tuple[str, ...] = (), limit: int = MAX_LISTED_ERRORS
) -> tuple[list[dict[str, str]], int]:
    """The first ``limit`` field errors of ``exc`` and how many there are in all, in bounded time."""
    total = exc.error_count()
    if total > _MAX_EXPANDED_ERRORS:
        field = ".".join(prefix) or "(body)"
        return [{"field": field, "reason": f"{total} invalid values (too many to list)"}], total
    return field_errors(exc.errors(include_url=False, include_context=False, include_input=False), prefix, limit), total


def install(app: FastAPI) -> None:
    """Route FastAPI's own errors through problem+json too."""

    @app.exception_handler(Problem)
    async def _problem(_: Request, exc: Problem) -> Response:
        return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extensions)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        if any(e.get("type") == "json_invalid" for e in errors):
            return problem_response(400, "Malformed JSON", "the request body is not valid JSON")
        limit = getattr(request.app.state.settings, "max_listed_errors", MAX_LISTED_ERRORS)
        return problem_response(
            422, "Invalid request", "see 'errors'", errors=field_errors(errors, limit=limit), error_count=len(errors)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))
