"""The record formats of ``jobs.dead-letters``: the one encoder and decoder of a dead letter, and of
the record that says one was re-driven (``redrive_record``).

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


REDRIVEN = "redriven"  #: the ``type`` of a re-drive record, next to the dead letters on the same topic


def redrive_record(
    *,
    dead_letter_id: str,
    job_id: str,
    tenant: str,
    by: str,
    idempotency_key: str | None = None,
    fingerprint: str | None = None,
) -> bytes:
    """The record that says a dead letter was re-driven as ``job_id`` (owned by ``tenant``, asked by
    ``by``): written in the same flush as the new job, so it is durable exactly when the job is, and
    every API process learns it by reading the topic. ``idempotency_key``/``fingerprint``: the
    caller's key and what its request held, so a retry with the key answers with the same job."""
    return orjson.dumps(
        {
            "type": REDRIVEN,
            "dead_letter_id": dead_letter_id,
            "job_id": job_id,
            "tenant": tenant,
            "by": by,
            "idempotency_key": idempotency_key,
            "fingerprint": fingerprint,
            "ts": utcnow().isoformat(),
        }
    )


def load_redrive(value: bytes) -> dict[str, Any]:
    """A re-drive record back; raises ValueError for anything else."""
    data = orjson.loads(value)
    if not (
        isinstance(data, dict)
        and data.get("type") == REDRIVEN
        and isinstance(data.get("dead_letter_id"), str)
        and isinstance(data.get("job_id"), str)
        and isinstance(data.get("by"), str)
    ):
        raise ValueError("not a re-drive record")
    return data
