"""The processes' log format: text for people, or one JSON object per line for log collectors.

``JOBSTREAM_LOG_FORMAT=json`` writes each record as a JSON object with ``ts``, ``level``, ``logger``,
``message``, and ``job_id``, ``tenant`` and ``trace_id`` where known: from the call's ``extra``,
else from ``log_context`` (set around work on one job), else (``trace_id``) the current span.
Other ``extra`` fields are kept unless their name looks like a secret.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

from telemetry import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_FIELDS = ("job_id", "tenant", "trace_id")
_CONTEXT: dict[str, ContextVar[str | None]] = {name: ContextVar(f"log_{name}", default=None) for name in _FIELDS}
_SECRET = re.compile(r"secret|passw|token|api_?key|authoriz|credential|cookie", re.IGNORECASE)
# the attributes every LogRecord has: anything else came in through ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


@contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Within the block, log lines of this task/thread carry ``fields`` (job_id, tenant, trace_id)."""
    tokens = [(_CONTEXT[name], _CONTEXT[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages and tracebacks are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None) or _CONTEXT[name].get()
            if value is None and name == "trace_id" and tracing.enabled():
                value = tracing.current_trace_id()
            if value is not None:
                out[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in _FIELDS and key not in out and not key.startswith("_"):
                out[key] = "[redacted]" if _SECRET.search(key) else value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Log to stderr at ``level`` as ``fmt`` (``text`` or ``json``: JOBSTREAM_LOG_FORMAT)."""
    if fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT, datefmt="%H:%M:%S")
