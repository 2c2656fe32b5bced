"""The dead-letter topic: requests a worker cannot handle, with the reason and the original bytes.

Two reasons put a request here: it cannot be decoded (not JSON, not a
``JobRequested``), or it kept killing its calculation process
(``JOBSTREAM_CRASH_MAX`` times). The record is JSON so any tool can read it;
the original Kafka value travels base64-encoded, byte for byte, with where it
came from (topic, partition, offset). When the job id is known, the worker also
emits a ``failed`` event, so the client is not left waiting.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from streams.events import utcnow
from streams.producer import AsyncProducer, Outgoing, ProduceError
from telemetry import metrics

logger = logging.getLogger(__name__)

UNDECODABLE = "undecodable"  #: not JSON, or not a JobRequested
CRASHED = "crashed"  #: killed its calculation process too often


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
    source: Source | None = None,
) -> bytes:
    """The dead-letter value: reason, error, job and source, and the original bytes (base64)."""
    return orjson.dumps(
        {
            "reason": reason,
            "error": error[:4000],
            "job_id": job_id,
            "tenant": tenant,
            "source": None
            if source is None
            else {"topic": source.topic, "partition": source.partition, "offset": source.offset},
            "ts": utcnow().isoformat(),
            "original": base64.b64encode(original).decode(),
        }
    )


def load(value: bytes) -> dict[str, Any]:
    """Read a dead-letter record back; ``original`` is bytes again."""
    data = orjson.loads(value)
    data["original"] = base64.b64decode(data["original"])
    return data


class DeadLetters:
    def __init__(self, producer: AsyncProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self.sent = 0

    async def send(
        self,
        original: bytes,
        *,
        reason: str,
        error: str,
        job_id: str | None = None,
        tenant: str | None = None,
        source: Source | None = None,
        key: bytes | None = None,
    ) -> None:
        """Produce the record and wait for Kafka's ack (retrying: the source is acked only after)."""
        value = record(original, reason=reason, error=error, job_id=job_id, tenant=tenant, source=source)
        outgoing = Outgoing(self._topic, key or (job_id or "").encode(), value)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(ProduceError),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            before_sleep=_log_retry,
        ):
            with attempt:
                await self._producer.send_many([outgoing])
        self.sent += 1
        metrics.DEAD_LETTERS.labels(reason).inc()
        logger.error("dead-lettered a request: %s", reason, extra={"job_id": job_id, "reason": reason})


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    logger.warning(
        "dead letter not acknowledged (%s); again in %.1fs", exc, state.next_action.sleep if state.next_action else 0.0
    )
