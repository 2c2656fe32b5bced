"""An asyncio face on confluent-kafka's Producer: ``send_many`` settles when Kafka acked.

A caller awaits ``send_many`` and learns that every message is acknowledged (acks=all,
idempotent) or gets ``ProduceError`` (refused, or no acknowledgement within
``produce_timeout_s``). Deliveries are reported only from ``poll()``, so while sends are in
flight the loop polls itself and callbacks settle futures on its own thread; a thread polls
while idle so librdkafka's logs and errors are still served.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from streams.errors import JobstreamError
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.001  # a loop with sends in flight polls this often: at most +1 ms to an ack
IDLE_POLL_S = 0.05  # the background thread's poll timeout while no loop is polling


class ProduceError(JobstreamError, RuntimeError):
    """Kafka did not acknowledge a message in time (or refused it).

    ``outcome`` is None when nothing was handed to the producer (the request was surely not
    written); otherwise it resolves, once every handed-over record got its delivery report, to
    what really happened — records may land after the caller stopped waiting.
    """

    def __init__(self, message: str, outcome: "asyncio.Future[Outcome] | None" = None) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Outgoing:
    topic: str
    key: bytes
    value: bytes


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Outcome:
    """The delivery reports of one ``send_many``: ``delivered[i]`` is None for a record that failed."""

    delivered: list[Delivered | None]
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class AsyncProducer:
    """Idempotent producer; ``send_many`` resolves once Kafka acknowledged every message."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, delivery_timeout_s: float | None = None) -> None:
        # With ``delivery_timeout_s`` (the ingest API: JOBSTREAM_DELIVERY_TIMEOUT_S) librdkafka keeps
        # trying longer than a caller waits (produce_timeout_s): a record whose caller gave up waiting
        # is still delivered (idempotent: once) when the broker answers again, and
        # ``ProduceError.outcome`` says so. Without it both are produce_timeout_s.
        delivery_ms = int(max(delivery_timeout_s or 0.0, settings.produce_timeout_s) * 1000)
        self._producer = Producer(kafka.producer_config(**{"message.timeout.ms": delivery_ms}))
        self._timeout_s = settings.produce_timeout_s
        self._pollers: dict[asyncio.AbstractEventLoop, _LoopPoller] = {}  # loops with sends in flight
        self._report_lock = threading.Lock()  # reports normally arrive on the loop, rarely on another thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_while_idle, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _poll_while_idle(self) -> None:
        """Serve librdkafka's events (logs, errors) while no loop polls; step aside while one does."""
        while not self._stop.is_set():
            if any(not loop.is_closed() for loop in list(self._pollers)):
                self._stop.wait(IDLE_POLL_S)
            else:
                self._producer.poll(IDLE_POLL_S)

    async def send_many(self, messages: list[Outgoing]) -> list[Delivered]:
        """Produce all messages in one go and wait for every acknowledgement (in ``messages`` order)."""
        if not messages:
            return []
        loop = asyncio.get_running_loop()
        send = _Send(loop, len(messages), loop.time() + self._timeout_s, self._timeout_s, self._report_lock)
        index = 0
        try:
            for index, message in enumerate(messages):
                self._producer.produce(message.topic, key=message.key, value=message.value,
                                       on_delivery=send.reporter(index))
        except Exception as exc:  # BufferError (queue full), KafkaException (too large, unknown topic...)
            reason = "producer queue is full" if isinstance(exc, BufferError) else str(exc)
            send.future.cancel()
            if index == 0:  # nothing handed over: surely not written
                send.outcome.cancel()
                raise ProduceError(reason) from exc
            send.abandon(index, reason)  # the records before ``index`` are on their way
            self._poller(loop).add(send)
            raise ProduceError(reason, send.outcome) from exc
        self._poller(loop).add(send)
        return await send.future

    def _poller(self, loop: asyncio.AbstractEventLoop) -> "_LoopPoller":
        poller = self._pollers.get(loop)
        if poller is None:
            poller = self._pollers[loop] = _LoopPoller(self, loop)
        return poller

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
        self._sends: deque[_Send] = deque()  # oldest first: the same timeout for all, so deadline order
        self._timer: asyncio.TimerHandle | None = None

    def add(self, send: _Send) -> None:
        self._sends.append(send)
        if self._timer is None:
            self._timer = self._loop.call_later(POLL_INTERVAL_S, self._tick)

    def _tick(self) -> None:
        self._owner._producer.poll(0)  # runs the delivery callbacks here, on the loop
        sends, now = self._sends, self._loop.time()
        while sends and (sends[0].future.done() or sends[0].deadline <= now):
            sends.popleft().expire()  # no-op for a settled send
        if sends:
            self._timer = self._loop.call_later(POLL_INTERVAL_S, self._tick)
        else:
            self._timer = None
            del self._owner._pollers[self._loop]  # idle: the background thread polls again


class _Send:
    """The delivery reports of one ``send_many``: settled on its loop once all are in."""

    __slots__ = ("loop", "future", "outcome", "deadline", "_timeout_s", "_thread", "_left", "_results", "_error",
                 "_lock")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, deadline: float, timeout_s: float,
                 lock: threading.Lock) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Delivered]] = loop.create_future()  # settled by the deadline at the latest
        self.outcome: asyncio.Future[Outcome] = loop.create_future()  # settled once every report is in
        self.deadline = deadline
        self._timeout_s = timeout_s
        self._thread = threading.get_ident()  # the loop's thread
        self._left = size
        self._results: list[Delivered | None] = [None] * size
        self._error: str | None = None
        self._lock = lock

    def reporter(self, index: int):  # type: ignore[no-untyped-def]
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            delivered = None if err is not None else Delivered(msg.topic(), msg.partition(), msg.offset())
            with self._lock:
                if err is not None:
                    self._error = self._error or err.str()
                self._results[index] = delivered
                self._left -= 1
                complete = self._left == 0
            if not complete:
                return
            if threading.get_ident() == self._thread:  # the usual case: polled by the loop
                self.settle()
            else:  # polled by the idle thread or by close()'s flush
                try:
                    self.loop.call_soon_threadsafe(self.settle)
                except RuntimeError:  # the loop is closed: nobody awaits this any more
                    pass

        return on_delivery

    def abandon(self, start: int, reason: str) -> None:
        """Records from ``start`` on were never handed to the producer: they count as failed."""
        with self._lock:
            self._error = self._error or reason
            self._left -= len(self._results) - start
            complete = self._left == 0
        if complete:
            self.settle()

    def settle(self) -> None:
        if not self.outcome.done():
            self.outcome.set_result(Outcome(list(self._results), self._error))
        if self.future.done():  # timed out or cancelled meanwhile
            return
        if self._error is not None:
            self.future.set_exception(ProduceError(self._error, self.outcome))
        else:
            self.future.set_result(self._results)  # type: ignore[arg-type]

    def expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(ProduceError(
                f"no acknowledgement from Kafka within {self._timeout_s}s", self.outcome))
