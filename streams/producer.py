"""An asyncio face on confluent-kafka's Producer.

confluent-kafka only reports deliveries from ``poll()``/``flush()``, so a
background thread polls continuously and hands the results to the event loop
with ``call_soon_threadsafe`` (confluentinc/confluent-kafka-python#885). A caller
awaits ``send_many`` and learns that every message is acknowledged (acks=all,
idempotent) or gets ``ProduceError``.

One ``send_many`` is one asyncio future, however many messages it holds, and the
poll thread settles every call that completed during one ``poll()`` with a
single hop to the loop: a loop wake-up per message was a large share of an API
submit's CPU at thousands of submits a second.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message, Producer

from streams.kafka_config import producer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)


class ProduceError(RuntimeError):
    """Kafka did not acknowledge a message in time (or refused it)."""


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


class AsyncProducer:
    """Idempotent producer; ``send_many`` resolves once Kafka acknowledged every message."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self._producer = Producer(producer_config(bootstrap, settings))
        self._timeout_s = settings.produce_timeout_s
        self._settled: list[_Send] = []  # completed sends not yet handed to their loop
        self._settled_lock = threading.Lock()  # reports arrive on the poll thread, and on flush()'s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)
            self._hand_over()
        self._hand_over()

    def _hand_over(self) -> None:
        """One ``call_soon_threadsafe`` per loop for every send completed since the last call."""
        if not self._settled:
            return
        with self._settled_lock:
            settled = self._settled[:]
            self._settled.clear()
        by_loop: dict[asyncio.AbstractEventLoop, list[_Send]] = {}
        for send in settled:
            by_loop.setdefault(send.loop, []).append(send)
        for loop, sends in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, sends)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                pass

    async def send_many(self, messages: list[Outgoing]) -> list[Delivered]:
        """Produce all messages in one go and wait for every acknowledgement (in ``messages`` order)."""
        send = _Send(asyncio.get_running_loop(), len(messages), self._settled_lock, self._settled)
        try:
            for index, message in enumerate(messages):
                self._producer.produce(message.topic, key=message.key, value=message.value,
                                       on_delivery=send.reporter(index))
        except BufferError as exc:
            send.future.cancel()
            raise ProduceError("producer queue is full") from exc
        except Exception as exc:  # KafkaException: message too large, unknown topic, ...
            send.future.cancel()
            raise ProduceError(str(exc)) from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                return await send.future
        except TimeoutError as exc:
            raise ProduceError(f"no acknowledgement from Kafka within {self._timeout_s}s") from exc

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


class _Send:
    """The delivery reports of one ``send_many``, counted off the loop (on the poll thread)."""

    __slots__ = ("loop", "future", "_left", "_results", "_error", "_lock", "_settled")

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, lock: threading.Lock,
                 settled: list[_Send]) -> None:
        self.loop = loop
        self.future: asyncio.Future[list[Delivered]] = loop.create_future()
        self._left = size
        self._results: list[Delivered | None] = [None] * size
        self._error: str | None = None
        self._lock = lock
        self._settled = settled
        if size == 0:
            self.future.set_result([])

    def reporter(self, index: int):  # type: ignore[no-untyped-def]
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            delivered = None if err is not None else Delivered(msg.topic(), msg.partition(), msg.offset())
            with self._lock:
                if err is not None:
                    self._error = self._error or err.str()
                self._results[index] = delivered
                self._left -= 1
                if self._left == 0:
                    self._settled.append(self)

        return on_delivery

    def settle(self) -> None:
        if self.future.done():  # timed out or cancelled meanwhile
            return
        if self._error is not None:
            self.future.set_exception(ProduceError(self._error))
        else:
            self.future.set_result(self._results)  # type: ignore[arg-type]


def _settle_all(sends: list[_Send]) -> None:
    for send in sends:
        send.settle()
