"""The record format of ``jobs.dead-letters``: the one encoder and decoder of a dead letter.

Processors write dead letters (``processors.dead_letters``); the API lists and re-drives them
(``dead_letters/``). The record is JSON so any tool can read it; the original Kafka value travels
base64-encoded, byte for byte, with where it came from (topic, partition, offset).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from streams.events import utcnow

UNDECODABLE = "undecodable"  #: not JSON, or not a JobRequested
CRASHED = "crashed"  #: killed its calculation process too often
MAX_ERROR_CHARS = 4000  #: an error message is cut to this length in the record


@dataclass(frozen=True)
class Source:
    topic: str
    partition: int
    offset: int


def record(
    original: bytes,
    *,
    reason: str,
    error: str,
    job_id: str | None = None,
    tenant: str | None = None,
    kind: str | None = None,
    source: Source | None = None,
) -> bytes:
    """The dead-letter value: reason, error, job, kind and source, and the original bytes (base64)."""
    return orjson.dumps(
        {
            "reason": reason,
            "error": error[:MAX_ERROR_CHARS],
            "job_id": job_id,
            "tenant": tenant,
            "kind": kind,
            "source": None
            if source is None
            else {"topic": source.topic, "partition": source.partition, "offset": source.offset},
            "ts": utcnow().isoformat(),
            "original": base64.b64encode(original).decode(),
        }
    )


def load(value: bytes) -> dict[str, Any]:
    """Read a dead-letter record back; ``original`` is bytes again. Raises ValueError for anything else."""
    data = orjson.loads(value)
    if not isinstance(data, dict) or not isinstance(data.get("original"), str):
        raise ValueError("not a dead letter")
    data["original"] = base64.b64decode(data["original"], validate=True)
    return data
