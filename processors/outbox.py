"""Where a worker's job events leave: numbered, in order, and acknowledged.

One sender task drains the queue in chunks and produces each chunk with an
idempotent, acks=all confluent producer, so one job's events reach Kafka in
``seq`` order. ``emit`` returns a future resolved once Kafka acknowledged the
event; the runner acks a request's source offset only after its terminal
event's future resolved (at-least-once). A chunk Kafka did not acknowledge is
sent again, as is (same seqs: readers dedupe), until it is — the worker's
offsets simply do not move meanwhile.

Unlike ``streams.producer.AsyncProducer`` (one future per message), a chunk is
settled with ONE hop from the delivery thread to the event loop: at thousands of
events a second, a loop wake-up per message is a large share of a worker's CPU.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from processors.sequence import TERMINAL_SEQ, SeqClock
from streams.events import TERMINAL_EVENTS, EventType, JobEvent, JobRequested, dumps
from streams.kafka_config import producer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)

CHUNK = 1000  # events per produce round (well under librdkafka's queue)
RETRY_MIN_S, RETRY_MAX_S = 0.2, 5.0


class ChunkNotDelivered(Exception):
    """Kafka refused, or did not acknowledge in time, at least one event of a chunk."""


class _Chunk:
    """Counts delivery reports of one chunk on the poll thread; settles one future on the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self._left = size
        self._error: str | None = None
        self._lock = threading.Lock()
        self.done: asyncio.Future[None] = loop.create_future()

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        with self._lock:
            if err is not None and self._error is None:
                self._error = err.str()
            self._left -= 1
            finished = self._left == 0
        if finished:
            self._loop.call_soon_threadsafe(self._settle)

    def fail_rest(self, unsent: int, reason: str) -> None:
        """``unsent`` records were never handed to the producer."""
        with self._lock:
            self._error = self._error or reason
            self._left -= unsent
            finished = self._left == 0
        if finished:
            self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if self.done.done():
            return
        if self._error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(ChunkNotDelivered(self._error))


class Outbox:
    def __init__(self, bootstrap: str, settings: Settings, topic: str, seqs: SeqClock | None = None) -> None:
        self._producer = Producer(producer_config(bootstrap, settings))
        self._timeout_s = settings.produce_timeout_s
        self._max_bytes = settings.max_message_bytes - 1024  # headroom for the record's framing
        self._topic = topic
        self.seqs = seqs or SeqClock()
        self._queue: list[tuple[bytes, bytes, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="outbox-poll", daemon=True)
        self.sent = 0

    def start(self) -> "Outbox":
        self._poller.start()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def stop(self) -> None:
        """Send what is queued (best effort), then stop."""
        if self._task is None:
            return
        for _ in range(50):
            if not self._queue:
                break
            await asyncio.sleep(0.1)
        self._task.cancel()
        await asyncio.to_thread(self._producer.flush, self._timeout_s)
        self._stop.set()
        self._poller.join(timeout=5)

    def emit(self, request: JobRequested, type_: EventType, data: dict[str, Any]) -> asyncio.Future[None] | None:
        """Number the event and queue it. Terminal events (``TERMINAL_SEQ``) return a future that
        resolves once Kafka acknowledged them; the others are fire-and-forget (their order is kept)."""
        terminal = type_ in TERMINAL_EVENTS
        if terminal:
            seq = TERMINAL_SEQ
            self.seqs.forget(request.job_id)
        else:
            seq = self.seqs.next(request.job_id, request.ts)
        value = dumps(JobEvent(job_id=request.job_id, tenant=request.tenant, seq=seq, type=type_,
                               kind=request.kind, data=data))
        if len(value) > self._max_bytes:  # it could never be delivered: say so instead of retrying forever
            logger.error("%s event of %s is %d bytes, over the message limit", type_.value, request.job_id,
                         len(value))
            value = dumps(JobEvent(
                job_id=request.job_id, tenant=request.tenant, seq=seq,
                type=EventType.FAILED if terminal else EventType.PROGRESS, kind=request.kind,
                data={"error": {"type": "result_too_large", "message": f"the {type_.value} event would be "
                                f"{len(value)} bytes; the limit is JOBSTREAM_MAX_MESSAGE_BYTES"}}
                if terminal else {},
            ))
        done = asyncio.get_running_loop().create_future() if terminal else None
        self._queue.append((request.job_id.encode(), value, done))
        self._wake.set()
        return done

    def __len__(self) -> int:
        return len(self._queue)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                chunk, self._queue = self._queue[:CHUNK], self._queue[CHUNK:]
                await self._send(chunk)

    async def _send(self, chunk: list[tuple[bytes, bytes, asyncio.Future[None] | None]]) -> None:
        records = [(key, value) for key, value, _ in chunk]
        delay = RETRY_MIN_S
        while True:
            try:
                await self._produce(records)
                break
            except ChunkNotDelivered as exc:
                logger.warning("Kafka did not acknowledge %d events (%s); sending them again in %.1fs",
                               len(records), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self.sent += len(records)
        for _, _, done in chunk:
            if done is not None and not done.done():
                done.set_result(None)

    async def _produce(self, records: list[tuple[bytes, bytes]]) -> None:
        chunk = _Chunk(asyncio.get_running_loop(), len(records))
        for index, (key, value) in enumerate(records):
            try:
                self._producer.produce(self._topic, key=key, value=value, on_delivery=chunk.on_delivery)
            except BufferError:  # librdkafka's queue is full: let deliveries drain, then go on
                await asyncio.sleep(0.05)
                try:
                    self._producer.produce(self._topic, key=key, value=value, on_delivery=chunk.on_delivery)
                except Exception as exc:
                    chunk.fail_rest(len(records) - index, str(exc))
                    break
            except Exception as exc:  # KafkaException: message too large, unknown topic, ...
                chunk.fail_rest(len(records) - index, str(exc))
                break
        try:
            await asyncio.wait_for(asyncio.shield(chunk.done), self._timeout_s + 5)
        except asyncio.TimeoutError:
            raise ChunkNotDelivered(f"no acknowledgement within {self._timeout_s + 5}s") from None
