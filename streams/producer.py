"""The one Kafka producer of the services: idempotent, acks=all, acknowledgements awaited on the loop.

confluent-kafka reports deliveries only from ``poll()``/``flush()``, on the thread that calls
them (confluentinc/confluent-kafka-python#885). While a loop has sends in flight, that loop
polls itself every millisecond, so delivery callbacks run on the loop's own thread and settle
their futures directly, with no thread hop (docs/benchmarks.md, "Ingest API"); a thread polls
only while nothing is in flight, so librdkafka's logs and errors are served when idle. With
``poll_on_loop=False`` (the processors) the thread always polls instead and each send is
handed to its loop once, when its last report is in: cheaper for a loop whose sends are
chunks of hundreds of records, where a tick every millisecond would cost more than it saves.

Two ways to send, one future each: ``send_many`` (records for any topics, with each record's
position: the ingest API) and ``send_batch`` (one topic, one ``produce_batch`` call, one count
for the whole chunk: the processors' events, thousands a second). Both raise ``ProduceError``
when a record is refused or not acknowledged in time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from confluent_kafka import KafkaError, Message, Producer

from streams.errors import JobstreamError
from streams.kafka_config import KafkaConnection
from telemetry import metrics

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.001  # a loop with sends in flight polls this often: at most +1 ms to an ack
IDLE_POLL_S = 0.05  # the background thread's poll timeout while no loop is polling


class ProduceError(JobstreamError, RuntimeError):
    """Kafka did not acknowledge a message in time (or refused it).

    ``outcome`` is None when nothing was handed to the producer (the request was surely not
    written); otherwise it resolves, once every handed-over record got its delivery report, to
    what really happened — records may land after the caller stopped waiting.
    """

    def __init__(self, message: str, outcome: asyncio.Future[Outcome] | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class Outgoing(NamedTuple):
    """One record to produce. A named tuple, not a dataclass: two are built per submitted job, and a
    tuple is the cheapest immutable value to build (docs/benchmarks.md, "Tracing")."""

    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]] | None = None  #: Kafka record headers (a job's trace context), if any
    partition: int = -1  #: -1: the producer's partitioner picks one from the key (requests: ``streams.partitioning``)


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Outcome:
    """The delivery reports of one send: ``delivered[i]`` is None for a record that failed (empty for
    ``send_batch``, which only counts)."""

    delivered: list[Delivered | None]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class AsyncProducer:
    """Idempotent producer; a send resolves once Kafka acknowledged every message of it."""

    def __init__(
        self,
        kafka: KafkaConnection,
        produce_timeout_s: float,
        delivery_timeout_s: float | None = None,
        *,
        poll_on_loop: bool = True,
    ) -> None:
        # With ``delivery_timeout_s`` (the ingest API: JOBSTREAM_DELIVERY_TIMEOUT_S) librdkafka keeps
        # trying longer than a caller waits (produce_timeout_s): a record whose caller gave up waiting
        # is still delivered (idempotent: once) when the broker answers again, and
        # ``ProduceError.outcome`` says so. Without it both are produce_timeout_s.
        delivery_ms = int(max(delivery_timeout_s or 0.0, produce_timeout_s) * 1000)
        self._producer = Producer(kafka.producer_config(**{"message.timeout.ms": delivery_ms}))
        self._timeout_s = produce_timeout_s
        self._pollers: dict[asyncio.AbstractEventLoop, _LoopPoller] = {}  # loops with sends in flight
        self._report_lock = threading.Lock()  # reports normally arrive on the loop, rarely on another thread
        self._stop = threading.Event()
        self._poll_on_loop = poll_on_loop
        self._thread = threading.Thread(
            target=self._poll_while_idle if poll_on_loop else self._poll_always, name="kafka-producer-poll", daemon=True
        )
        self._thread.start()

    def _poll_while_idle(self) -> None:
        """Serve librdkafka's events (logs, errors) while no loop polls; step aside while one does."""
        while not self._stop.is_set():
            if any(not loop.is_closed() for loop in list(self._pollers)):
                self._stop.wait(IDLE_POLL_S)
            else:
                self._producer.poll(IDLE_POLL_S)

    def _poll_always(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(IDLE_POLL_S)

    def _watch(self, loop: asyncio.AbstractEventLoop, send: _Send) -> None:
        """Have ``send`` polled for and failed at its deadline (unless it is already done)."""
        if send.future.done():
            return
        if self._poll_on_loop:
            poller = self._pollers.get(loop)
            if poller is None:
                poller = self._pollers[loop] = _LoopPoller(self, loop)
            poller.add(send)
        else:
            send.timer = loop.call_at(send.deadline, send.expire)

    async def send_many(self, messages: list[Outgoing]) -> list[Delivered]:
        """Produce all messages in one go and wait for every acknowledgement (in ``messages`` order)."""
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        send = _Send(loop, len(messages), self._timeout_s, self._report_lock, keep_reports=True)
        index = 0
        try:
            for index, message in enumerate(messages):
                if message.headers is None:
                    self._producer.produce(
                        message.topic,
                        key=message.key,
                        value=message.value,
                        partition=message.partition,
                        on_delivery=send.reporter(index),
                    )
                else:
                    self._producer.produce(
                        message.topic,
                        key=message.key,
                        value=message.value,
                        headers=message.headers,
                        partition=message.partition,
                        on_delivery=send.reporter(index),
                    )
        except Exception as exc:  # BufferError (queue full), KafkaException (too large, unknown topic...)
            reason = "producer queue is full" if isinstance(exc, BufferError) else str(exc)
            metrics.PRODUCE_ERRORS.inc()
            send.future.cancel()
            if index == 0:  # nothing handed over: surely not written
                send.outcome.cancel()
                raise ProduceError(reason) from exc
            send.abandon(len(messages) - index, reason)  # the records before ``index`` are on their way
            self._watch(loop, send)
            raise ProduceError(reason, send.outcome) from exc
        self._watch(loop, send)
        return await send.future

    async def send_batch(
        self,
        topic: str,
        records: list[tuple[bytes, bytes]],
        wait_s: float | None = None,
        headers: list[list[tuple[str, bytes]] | None] | None = None,
    ) -> None:
        """Produce ``(key, value)`` records to ``topic`` in one ``produce_batch`` call and wait until Kafka
        acknowledged all of them (at most ``wait_s``, by default ``produce_timeout_s``). ``ProduceError``
        says that at least one was not: the others may have landed.

        ``headers`` (one entry per record, None for none): ``produce_batch`` takes no headers, so a
        chunk with any is produced record by record instead (in order)."""
        if not records:
            return
        loop = asyncio.get_running_loop()
        send = _Send(
            loop, len(records), self._timeout_s if wait_s is None else wait_s, self._report_lock, keep_reports=False
        )
        if headers is not None:
            await self._send_each(loop, send, topic, records, headers)
            return
        messages = [{"key": key, "value": value} for key, value in records]
        try:
            self._producer.produce_batch(topic, messages, on_delivery=send.on_delivery)
        except Exception as exc:  # TypeError, KafkaException: nothing was queued
            metrics.PRODUCE_ERRORS.inc()
            send.future.cancel()
            send.outcome.cancel()
            raise ProduceError(str(exc)) from exc
        # Refused messages (queue full, too large, unknown topic) are marked and get no delivery report.
        refused = [m["_error"] for m in messages if "_error" in m]
        if refused:
            send.abandon(len(refused), str(refused[0]))
        self._watch(loop, send)
        await send.future

    async def _send_each(
        self,
        loop: asyncio.AbstractEventLoop,
        send: _Send,
        topic: str,
        records: list[tuple[bytes, bytes]],
        headers: list[list[tuple[str, bytes]] | None],
    ) -> None:
        index = 0
        try:
            for index, (key, value) in enumerate(records):
                self._producer.produce(
                    topic, key=key, value=value, headers=headers[index], on_delivery=send.on_delivery
                )
        except Exception as exc:  # BufferError (queue full), KafkaException: the rest was not handed over
            send.future.cancel()
            if index == 0:
                send.outcome.cancel()
                raise ProduceError(str(exc)) from exc
            send.abandon(len(records) - index, str(exc))
            self._watch(loop, send)
            raise ProduceError(str(exc), send.outcome) from exc
        self._watch(loop, send)
        await send.future

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """True when the cluster answers a metadata request."""
        try:
            self._producer.list_topics(timeout=timeout_s)
            return True
        except Exception:
            return False

    def close(self) -> None:
        """Flush what is in flight (so nothing accepted is lost), then stop polling."""
        remaining = self._producer.flush(self._timeout_s)
        if remaining:
            logger.error("closing producer with %d undelivered messages", remaining)
        self._stop.set()
        self._thread.join(timeout=5)


class _LoopPoller:
    """Polls the producer from one event loop while that loop has sends in flight, and fails the
    sends that outlive their deadline (one timer per loop, not one per send)."""

    def __init__(self, owner: AsyncProducer, loop: asyncio.AbstractEventLoop) -> None:
        self._owner = owner
        self._loop = loop
        # oldest first per wait: sends with the same wait expire in the order they were added
        self._sends: dict[float, deque[_Send]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, send: _Send) -> None:
        sends = self._sends.get(send.wait_s)
        if sends is None:
            sends = self._sends[send.wait_s] = deque()
        sends.append(send)
        if self._timer is None:
            self._timer = self._loop.call_later(POLL_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        self._owner._producer.poll(0)  # runs the delivery callbacks here, on the loop
        now = self._loop.time()
        for sends in self._sends.values():
            while sends and (sends[0].future.done() or sends[0].deadline <= now):
                sends.popleft().expire()  # no-op for a settled send
        for wait_s in [wait_s for wait_s, sends in self._sends.items() if not sends]:
            del self._sends[wait_s]
        if self._sends:
            self._timer = self._loop.call_later(POLL_INTERVAL_S, self._tick)
        else:
            self._timer = None
            del self._owner._pollers[self._loop]  # idle: the background thread polls again


class _Send:
    """The delivery reports of one ``send_many`` or ``send_batch``: settled on its loop once all are in."""

    __slots__ = (
        "loop",
        "future",
        "outcome",
        "deadline",
        "wait_s",
        "timer",
        "_thread",
        "_left",
        "_results",
        "_error",
        "_lock",
    )

    def __init__(
        self, loop: asyncio.AbstractEventLoop, size: int, wait_s: float, lock: threading.Lock, keep_reports: bool
    ) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Delivered]] = loop.create_future()  # settled by the deadline at the latest
        self.outcome: asyncio.Future[Outcome] = loop.create_future()  # settled once every report is in
        self.wait_s = wait_s
        self.deadline = loop.time() + wait_s
        self.timer: asyncio.TimerHandle | None = None  # the deadline, when no loop poller watches it
        self._thread = threading.get_ident()  # the loop's thread
        self._left = size
        # each record's position (send_many); a batch only counts
        self._results: list[Delivered | None] = [None] * size if keep_reports else []
        self._error: str | None = None
        self._lock = lock

    def reporter(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        """The delivery callback of record ``index`` (``send_many``)."""
        results, on_delivery = self._results, self.on_delivery

        def report(err: KafkaError | None, msg: Message) -> None:
            if err is None:
                results[index] = Delivered(msg.topic(), msg.partition(), msg.offset())
            on_delivery(err, msg)

        return report

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        """The delivery callback of every record (``send_batch``), and the count behind ``reporter``."""
        with self._lock:
            if err is not None and self._error is None:
                self._error = err.str()
            self._left -= 1
            if self._left:
                return
        self._complete()

    def abandon(self, count: int, reason: str) -> None:
        """``count`` records were never handed to the producer: they count as failed."""
        with self._lock:
            self._error = self._error or reason
            self._left -= count
            if self._left:
                return
        self._complete()

    def _complete(self) -> None:
        if threading.get_ident() == self._thread:  # the usual case: polled by the loop
            self.settle()
        else:  # polled by the idle thread or by close()'s flush
            try:
                self.loop.call_soon_threadsafe(self.settle)
            except RuntimeError:  # the loop is closed: nobody awaits this any more
                pass

    def settle(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.outcome.done():
            self.outcome.set_result(Outcome(list(self._results), self._error))
        if self.future.done():  # timed out or cancelled meanwhile
            return
        if self._error is not None:
            metrics.PRODUCE_ERRORS.inc()
            self.future.set_exception(ProduceError(self._error, self.outcome))
        else:
            self.future.set_result(self._results)  # type: ignore[arg-type]  # filled for every index by now (None only before its report)

    def expire(self) -> None:
        if not self.future.done():
            metrics.PRODUCE_TIMEOUTS.inc()
            self.future.set_exception(
                ProduceError(f"no acknowledgement from Kafka within {self.wait_s}s", self.outcome)
            )
