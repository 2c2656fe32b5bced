"""Sending to the dead-letter topic: requests a worker cannot handle, with the reason and the original bytes.

Two reasons put a request here: it cannot be decoded (not JSON, not a
``JobRequested``), or it kept killing its calculation process
(``JOBSTREAM_CRASH_MAX`` times). The record format is ``streams.dead_letters``
(the API reads it back to list and re-drive dead letters). When the job id is
known, the worker also emits a ``failed`` event, so the client is not left waiting.
"""

from __future__ import annotations

import logging

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from streams.dead_letters import CRASHED, UNDECODABLE, Source, load, record
from streams.producer import AsyncProducer, Outgoing, ProduceError
from telemetry import metrics

logger = logging.getLogger(__name__)

__all__ = ["CRASHED", "UNDECODABLE", "DeadLetters", "Source", "load", "record"]


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
        kind: str | None = None,
        source: Source | None = None,
        key: bytes | None = None,
    ) -> None:
        """Produce the record and wait for Kafka's ack (retrying: the source is acked only after)."""
        value = record(original, reason=reason, error=error, job_id=job_id, tenant=tenant, kind=kind, source=source)
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
