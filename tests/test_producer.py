"""The one producer: ``send_batch`` (the processors' events) beside ``send_many`` (the API) on one loop,
polled from the loop (the API) or from its thread (the processors)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams import topics
from streams.kafka_config import KafkaConnection
from streams.producer import AsyncProducer, Outgoing, ProduceError
from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.kafka


@pytest.fixture
def own(settings: Settings) -> Settings:
    own = settings.model_copy(update={"topic_prefix": f"p{uuid.uuid4().hex[:8]}."})  # not the stack's topics
    ensure_topics(KafkaConnection.from_settings(own), own)
    return own


def read_all(settings: Settings, topic: str, partitions: int) -> list[bytes]:
    consumer = Consumer(KafkaConnection.from_settings(settings).consumer_config(f"read-{uuid.uuid4().hex}"))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        values: list[bytes] = []
        idle = 0
        while idle < 3:
            messages = consumer.consume(1000, timeout=1.0)
            idle = 0 if messages else idle + 1
            values += [m.value() for m in messages if not m.error()]
        return values
    finally:
        consumer.close()


@pytest.mark.parametrize("poll_on_loop", [True, False])
def test_batches_and_single_sends_share_one_producer_and_every_ack(own: Settings, poll_on_loop: bool):
    events, requested = own.topic(topics.EVENTS), own.topic(topics.REQUESTED)
    producer = AsyncProducer(KafkaConnection.from_settings(own), own.produce_timeout_s, poll_on_loop=poll_on_loop)

    async def batches() -> None:
        for chunk in range(5):  # one key: one partition, so Kafka keeps the order they were sent in
            await producer.send_batch(events, [(b"job", b"%d" % (chunk * 100 + i)) for i in range(100)], 30.0)

    async def singles() -> None:
        for i in range(50):
            (delivered,) = await producer.send_many([Outgoing(requested, b"k%d" % i, b"{}")])
            assert delivered.topic == requested

    async def main() -> None:
        await asyncio.gather(batches(), singles())  # two waits on one loop: each expires on its own deadline
        await producer.send_batch(events, [])

    try:
        asyncio.run(main())
    finally:
        producer.close()
    assert read_all(own, events, own.events_partitions) == [b"%d" % i for i in range(500)]


@pytest.mark.parametrize("poll_on_loop", [True, False])
def test_a_batch_kafka_refuses_is_a_produce_error(own: Settings, poll_on_loop: bool):
    producer = AsyncProducer(KafkaConnection.from_settings(own), own.produce_timeout_s, poll_on_loop=poll_on_loop)
    too_large = b"x" * (own.max_message_bytes + 1)

    async def main() -> None:
        with pytest.raises(ProduceError):
            await producer.send_batch("not a valid topic name!", [(b"k", b"{}")])
        with pytest.raises(ProduceError):  # one record refused: the chunk is not acknowledged
            await producer.send_batch(own.topic(topics.EVENTS), [(b"k", b"{}"), (b"k", too_large)])

    try:
        asyncio.run(main())
    finally:
        producer.close()


def test_a_send_past_its_wait_fails_and_its_outcome_still_arrives(own: Settings):
    producer = AsyncProducer(KafkaConnection.from_settings(own), own.produce_timeout_s, poll_on_loop=False)

    async def main() -> None:
        with pytest.raises(ProduceError, match="no acknowledgement") as caught:
            await producer.send_batch(own.topic(topics.EVENTS), [(b"k", b"{}")], wait_s=0)
        assert caught.value.outcome is not None and (await caught.value.outcome).ok  # it landed all the same

    try:
        asyncio.run(main())
    finally:
        producer.close()
