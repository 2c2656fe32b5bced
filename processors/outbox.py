"""Where a worker's job events leave: numbered, in order, and acknowledged.

One sender task drains the queue in chunks and produces each chunk with an
idempotent, acks=all confluent producer, so one job's events reach Kafka in
``seq`` order. ``emit`` takes an ``on_delivered`` callback, called on the loop
once Kafka acknowledged the event (a plain call from the sender task, not a
future and a scheduled callback per job); the runner acks a request's source
offset only from its terminal event's callback (at-least-once). A chunk Kafka
did not acknowledge is sent again, as is (same seqs: readers dedupe), until it
is — the worker's offsets simply do not move meanwhile.

Unlike ``streams.producer.AsyncProducer`` (one future per message), a chunk is
settled with ONE hop from the delivery thread to the event loop: at thousands of
events a second, a loop wake-up per message is a large share of a worker's CPU.
For the same reason an event's bytes are written with orjson straight from its
fields (``event_bytes``, byte for byte what ``streams.events.dumps`` makes of a
``JobEvent``, which a test checks) instead of building and dumping a pydantic
model per event, and a chunk goes to librdkafka in one ``produce_batch`` call.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from typing import Any, Callable

from confluent_kafka import KafkaError, Message, Producer

from processors.sequence import TERMINAL_SEQ, SeqClock
from streams.events import TERMINAL_EVENTS, EventType, JobRequested
from streams.kafka_config import producer_config
from streams.settings import Settings
from streams.wire import encode_event

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
        self._queue: list[tuple[bytes, bytes, Callable[[], Any] | None]] = []
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

    def emit(self, request: JobRequested, type_: EventType, data: dict[str, Any],
             on_delivered: Callable[[], Any] | None = None) -> None:
        """Number the event (terminal events get ``TERMINAL_SEQ``) and queue it; ``on_delivered`` is called
        on the loop once Kafka acknowledged it. Events are sent in the order they were emitted."""
        terminal = type_ in TERMINAL_EVENTS
        now = datetime.now(timezone.utc)
        job_id = request.job_id
        if terminal:
            seq = TERMINAL_SEQ
            self.seqs.forget(job_id)
        else:
            seq = self.seqs.next(job_id, request.ts, now)
        value = encode_event(job_id, request.tenant, seq, type_, request.kind, data, now)
        if len(value) > self._max_bytes:  # it could never be delivered: say so instead of retrying forever
            logger.error("%s event of %s is %d bytes, over the message limit", type_.value, job_id, len(value))
            value = encode_event(
                job_id, request.tenant, seq, EventType.FAILED if terminal else EventType.PROGRESS, request.kind,
                {"error": {"type": "result_too_large", "message": f"the {type_.value} event would be "
                           f"{len(value)} bytes; the limit is JOBSTREAM_MAX_MESSAGE_BYTES"}} if terminal else {},
                now,
            )
        self._queue.append((job_id.encode(), value, on_delivered))
        self._wake.set()

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

    async def _send(self, chunk: list[tuple[bytes, bytes, Callable[[], Any] | None]]) -> None:
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
        for _, _, on_delivered in chunk:
            if on_delivered is not None:
                try:
                    on_delivered()
                except Exception:  # one caller's bug must not stop the outbox
                    logger.exception("on_delivered callback failed")

    async def _produce(self, records: list[tuple[bytes, bytes]]) -> None:
        chunk = _Chunk(asyncio.get_running_loop(), len(records))
        messages = [{"key": key, "value": value} for key, value in records]
        try:
            self._producer.produce_batch(self._topic, messages, on_delivery=chunk.on_delivery)
        except Exception as exc:  # TypeError, KafkaException: nothing was queued
            chunk.fail_rest(len(records), str(exc))
        else:
            # Refused messages (queue full, too large, unknown topic) are marked and get no delivery report;
            # the chunk then fails and is sent again whole, so one job's events never overtake each other.
            refused = [m["_error"] for m in messages if "_error" in m]
            if refused:
                chunk.fail_rest(len(refused), str(refused[0]))
        try:
            await asyncio.wait_for(asyncio.shield(chunk.done), self._timeout_s + 5)
        except asyncio.TimeoutError:
            raise ChunkNotDelivered(f"no acknowledgement within {self._timeout_s + 5}s") from None
