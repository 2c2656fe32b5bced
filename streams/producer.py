"""An asyncio face on confluent-kafka's Producer.

confluent-kafka only reports deliveries from ``poll()``/``flush()``, so a
background thread polls continuously and resolves asyncio futures with
``call_soon_threadsafe`` (confluentinc/confluent-kafka-python#885). A caller
awaits ``send_many`` and learns that every message is acknowledged (acks=all,
idempotent) or gets ``ProduceError``.
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
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-producer-poll", daemon=True)
        self._thread.start()

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    async def send_many(self, messages: list[Outgoing]) -> list[Delivered]:
        """Produce all messages in one go and wait for every acknowledgement."""
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Delivered]] = []
        for message in messages:
            future: asyncio.Future[Delivered] = loop.create_future()
            futures.append(future)
            try:
                self._producer.produce(
                    message.topic, key=message.key, value=message.value, on_delivery=_resolver(loop, future)
                )
            except BufferError as exc:
                raise ProduceError("producer queue is full") from exc
            except Exception as exc:  # KafkaException: message too large, unknown topic, ...
                raise ProduceError(str(exc)) from exc
        try:
            return list(await asyncio.wait_for(asyncio.gather(*futures), timeout=self._timeout_s))
        except asyncio.TimeoutError as exc:
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


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Delivered]):
    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        loop.call_soon_threadsafe(_settle, future, err, msg)

    return on_delivery


def _settle(future: asyncio.Future[Delivered], err: KafkaError | None, msg: Message) -> None:
    if future.done():
        return
    if err is not None:
        future.set_exception(ProduceError(err.str()))
    else:
        future.set_result(Delivered(msg.topic(), msg.partition(), msg.offset()))
