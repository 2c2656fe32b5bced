"""The ``Idempotency-Key`` request header: what a valid key is, and the 400 for one that is not.

Every route that takes a key (``POST /v1/jobs``, a dead letter's re-drive) checks it the same way.
"""

from __future__ import annotations

import re

from starlette.requests import Request

from edge.problems import Problem

MAX_LENGTH = 255
PATTERN = re.compile(rf"^[\x21-\x7e]{{1,{MAX_LENGTH}}}$")  # visible ASCII, no spaces
#: the header in an OpenAPI operation's parameters
OPENAPI_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_LENGTH, "pattern": PATTERN.pattern}


def idempotency_key_of(request: Request) -> str | None:
    """The ``Idempotency-Key`` header: 1 to 255 visible ASCII characters (no spaces), else 400 naming it."""
    key = request.headers.get("idempotency-key")
    if key is not None and not PATTERN.fullmatch(key):
        raise Problem(
            400,
            "Invalid Idempotency-Key",
            f"an Idempotency-Key is 1 to {MAX_LENGTH} visible ASCII characters (no spaces)",
            errors=[{"field": "Idempotency-Key", "reason": "empty, too long, or not visible ASCII"}],
        )
    return key
