"""Where a worker's job events leave: numbered, in order, and acknowledged.

One sender task drains the queue in chunks and hands each chunk to the worker's producer
(``AsyncProducer.send_batch``: one ``produce_batch`` call and one future per chunk, not per
event) without waiting for the previous chunk's acknowledgement (up to
``JOBSTREAM_OUTBOX_MAX_IN_FLIGHT`` chunks); librdkafka's idempotent producer keeps them in order
per partition, so one job's events reach Kafka in ``seq`` order. ``emit`` takes an
``on_delivered`` callback, called on the loop once Kafka acknowledged the event (chunks are
settled in order, by a second task); the runner acks a request's source offset only from its
terminal event's callback (at-least-once). A chunk Kafka did not acknowledge is sent
again, as is (same seqs: readers dedupe), until it is — the worker's offsets simply do
not move meanwhile. A job with a trace context (``traces``) has it on each of its events as
Kafka headers, and a job with a webhook its ``webhook`` header (``streams.wire.WEBHOOK_HEADER``);
while no job has either, no headers are looked at or built.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from processors.sequence import TERMINAL_SEQ, SeqClock
from streams import topics
from streams.events import TERMINAL_EVENTS, EventType, JobRequested
from streams.producer import AsyncProducer, ProduceError
from streams.settings import Settings
from streams.wire import encode_event, webhook_header
from telemetry.tracing import JobTrace

logger = logging.getLogger(__name__)

CHUNK = 1000  # events per produce round (well under librdkafka's queue)
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0
ACK_SLACK_S = 5.0  # a chunk waits produce_timeout_s + this: librdkafka's own timeout reports come first


_Chunk = list[tuple[bytes, bytes, Callable[[], Any] | None, list[tuple[str, bytes]] | None]]


def _log_resend(count: int) -> Callable[[RetryCallState], None]:
    def log(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "Kafka did not acknowledge %d events (%s); sending them again in %.1fs",
            count,
            exc,
            state.next_action.sleep if state.next_action else 0.0,
        )

    return log


@dataclass(frozen=True)
class OutboxConfig:
    """Where events go, how long an acknowledgement may take, how big a record may be."""

    topic: str
    produce_timeout_s: float
    max_message_bytes: int
    max_in_flight: int  #: JOBSTREAM_OUTBOX_MAX_IN_FLIGHT: chunks handed to the producer and not yet acknowledged

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboxConfig:
        return cls(
            settings.topic(topics.EVENTS),
            settings.produce_timeout_s,
            settings.max_message_bytes,
            settings.outbox_max_in_flight,
        )


class Outbox:
    def __init__(self, producer: AsyncProducer, config: OutboxConfig, seqs: SeqClock | None = None) -> None:
        self._producer = producer
        self._wait_s = config.produce_timeout_s + ACK_SLACK_S
        self._max_bytes = config.max_message_bytes - 1024  # headroom for the record's framing
        self._topic = config.topic
        self._max_in_flight = config.max_in_flight
        self._unsettled = 0  # chunks handed to the producer and not yet acknowledged
        self.seqs = seqs or SeqClock()
        self._queue: _Chunk = []
        #: job id -> its trace context, for jobs whose request carried one (set by the runner)
        self.traces: dict[str, JobTrace] = {}
        self._headers_seen = False  # a job ever had a trace or a webhook: chunks are checked for headers
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.sent = 0

    def start(self) -> Outbox:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        """Send what is queued (best effort), then stop (the producer's ``close`` flushes what is in flight)."""
        if self._task is None:
            return
        for _ in range(50):
            if not self._queue and not self._unsettled:
                break
            await asyncio.sleep(0.1)
        self._task.cancel()

    def emit(
        self,
        request: JobRequested,
        type_: EventType,
        data: dict[str, Any],
        on_delivered: Callable[[], Any] | None = None,
    ) -> None:
        """Number the event (terminal events get ``TERMINAL_SEQ``) and queue it; ``on_delivered`` is called
        on the loop once Kafka acknowledged it. Events are sent in the order they were emitted."""
        terminal = type_ in TERMINAL_EVENTS
        now = datetime.now(UTC)
        job_id = request.job_id
        headers = None
        if self.traces:
            trace = self.traces.pop(job_id, None) if terminal else self.traces.get(job_id)
            if trace is not None:
                headers = trace.headers
                self._headers_seen = True
        if request.webhook is not None:  # the notifier learns where to post even before the queued event
            headers = [*(headers or ()), webhook_header(request.webhook, request.webhook_events)]
            self._headers_seen = True
        if terminal:
            seq = TERMINAL_SEQ
            self.seqs.forget(job_id)
        else:
            seq = self.seqs.next(job_id, request.ts, now)
        value = encode_event(job_id, request.tenant, seq, type_, request.kind, data, now)
        if len(value) > self._max_bytes:  # it could never be delivered: say so instead of retrying forever
            logger.error(
                "%s event of %s is %d bytes, over the message limit",
                type_.value,
                job_id,
                len(value),
                extra={"job_id": job_id, "tenant": request.tenant},
            )
            value = encode_event(
                job_id,
                request.tenant,
                seq,
                EventType.FAILED if terminal else EventType.PROGRESS,
                request.kind,
                {
                    "error": {
                        "type": "result_too_large",
                        "message": f"the {type_.value} event would be "
                        f"{len(value)} bytes; the limit is JOBSTREAM_MAX_MESSAGE_BYTES",
                    }
                }
                if terminal
                else {},
                now,
            )
        self._queue.append((job_id.encode(), value, on_delivered, headers))
        self._wake.set()

    def __len__(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        """Hand chunks to the producer without waiting for the previous one's acknowledgement (at most
        ``max_in_flight`` unacknowledged), and settle them in order on another task: a chunk's wait for
        acks=all no longer holds back the events emitted meanwhile (a new tenant's ``running`` waited
        behind a busy tenant's chunks). librdkafka keeps them in order per partition; a chunk Kafka did
        not acknowledge is sent again, in order, before any later chunk is settled."""
        in_flight: asyncio.Queue[tuple[_Chunk, asyncio.Future[None]]] = asyncio.Queue()
        room = asyncio.Semaphore(self._max_in_flight)
        settler = asyncio.ensure_future(self._settle_forever(in_flight, room))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await room.acquire()
                    chunk, self._queue = self._queue[:CHUNK], self._queue[CHUNK:]
                    sent = asyncio.ensure_future(self._producer.send_batch(self._topic, *self._records(chunk)))
                    self._unsettled += 1
                    in_flight.put_nowait((chunk, sent))
        finally:
            settler.cancel()

    async def _settle_forever(
        self, in_flight: asyncio.Queue[tuple[_Chunk, asyncio.Future[None]]], room: asyncio.Semaphore
    ) -> None:
        while True:
            chunk, sent = await in_flight.get()
            try:
                await sent
            except ProduceError as exc:
                logger.warning("Kafka did not acknowledge %d events (%s); sending them again", len(chunk), exc)
                await self._send(chunk)
            else:
                self.sent += len(chunk)
                self._delivered(chunk)
            self._unsettled -= 1
            room.release()

    def _records(
        self, chunk: _Chunk
    ) -> tuple[list[tuple[bytes, bytes]], float, list[list[tuple[str, bytes]] | None] | None]:
        records = [(key, value) for key, value, _, _ in chunk]
        headers = None
        if self._headers_seen:
            headers = [h for _, _, _, h in chunk]
            if not any(headers):
                headers = None
        return records, self._wait_s, headers

    async def _send(self, chunk: _Chunk) -> None:
        """Send ``chunk`` until Kafka acknowledges it, then call its callbacks."""
        records, wait_s, headers = self._records(chunk)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(ProduceError),
            wait=wait_exponential(multiplier=RETRY_MIN_S, max=RETRY_MAX_S),
            before_sleep=_log_resend(len(records)),
        ):
            with attempt:
                await self._producer.send_batch(self._topic, records, wait_s, headers)
        self.sent += len(records)
        self._delivered(chunk)

    @staticmethod
    def _delivered(chunk: _Chunk) -> None:
        for _, _, on_delivered, _ in chunk:
            if on_delivered is not None:
                try:
                    on_delivered()
                except Exception:  # one caller's bug must not stop the outbox
                    logger.exception("on_delivered callback failed")
