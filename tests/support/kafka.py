"""Kafka clients for tests: put events on ``jobs.events`` (and read their headers), count (and read the
headers of) the requests on ``jobs.requested``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from streams import topics
from streams.events import JobEvent
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import decode_request, dumps
from tests.support.waiting import wait_until


class EventProducer:
    """Writes JobEvents to the real jobs.events topic, keyed by job id, acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.topic(topics.EVENTS)
        self.producer = Producer(KafkaConnection.from_settings(settings).producer_config())

    def send(self, *events: JobEvent, timestamp_ms: int = 0) -> None:
        errors: list[Any] = []
        for e in events:
            self.producer.produce(
                self.topic,
                key=e.job_id.encode(),
                value=dumps(e),
                timestamp=timestamp_ms,
                on_delivery=lambda err, _msg: errors.append(err) if err else None,
            )
        assert self.producer.flush(30) == 0 and not errors, errors


def produce(
    kafka: KafkaConnection,
    settings: Settings,
    events: list[JobEvent],
    headers: Callable[[JobEvent], list[tuple[str, bytes]] | None] | None = None,
) -> None:
    """Put events on ``jobs.events`` keyed by job id (as the API and processors do), acknowledged;
    ``headers``: each event's Kafka headers."""
    producer = Producer(kafka.producer_config())
    topic = settings.topic(topics.EVENTS)
    failures: list[str] = []
    for event in events:
        producer.produce(
            topic,
            key=event.job_id.encode(),
            value=dumps(event),
            headers=headers(event) if headers is not None else None,
            on_delivery=lambda err, _: failures.append(str(err)) if err else None,
        )
        producer.poll(0)
    if producer.flush(30) != 0 or failures:
        raise RuntimeError(f"events not acknowledged: {failures[:3]}")


def _end(consumer: Consumer, topic: str, partition: int, timeout_s: float = 30.0) -> int:
    """The partition's end offset; a broker that just came back may not know its leader for a moment."""

    def end() -> int | None:
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)[1]
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._UNKNOWN_PARTITION:
                raise
            return None

    found = wait_until(lambda: (e := end()) is not None and (e,), timeout_s, message=f"{topic}[{partition}]'s end")
    return found[0]  # type: ignore[index]


def _requests(bootstrap: str, topic: str) -> Iterator[Message]:
    """Every record on the topic up to its current end (read with a real consumer)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex}", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: _end(consumer, topic, p) for p in partitions}
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        seen = {p: 0 for p in partitions}
        while any(seen[p] < ends[p] for p in partitions):
            for message in consumer.consume(500, timeout=1):
                if message.error():
                    continue
                seen[message.partition()] = message.offset() + 1
                yield message
    finally:
        consumer.close()


def _job_of(message: Message) -> str | None:
    """The job id of a request record; None for one that is not a request (other tests put
    undecodable records on the topic on purpose)."""
    try:
        return decode_request(message.value()).job_id
    except ValueError:
        return None


def requests_for(bootstrap: str, topic: str, job_id: str) -> int:
    """How many JobRequested records for ``job_id`` are on the topic."""
    return sum(_job_of(m) == job_id for m in _requests(bootstrap, topic))


def request_headers(bootstrap: str, topic: str, job_id: str) -> list[tuple[str, bytes]] | None:
    """The Kafka headers of ``job_id``'s (first) JobRequested record; None: it has none."""
    for message in _requests(bootstrap, topic):
        if _job_of(message) == job_id:
            return message.headers()
    raise AssertionError(f"no request of job {job_id} on {topic}")


def event_headers(bootstrap: str, topic: str, job_id: str) -> dict[str, list[tuple[str, bytes]] | None]:
    """The Kafka headers of each of ``job_id``'s events on the topic, by event type."""
    found = {}
    for message in _requests(bootstrap, topic):
        if message.key() == job_id.encode():
            found[orjson.loads(message.value())["type"]] = message.headers()
    return found


def produce_requests(settings: Settings, *values: bytes, key: bytes = b"") -> None:
    """Put raw records on ``jobs.requested`` (say, ones a worker cannot decode), acknowledged."""
    producer = Producer(KafkaConnection.from_settings(settings).producer_config())
    failures: list[str] = []
    for value in values:
        producer.produce(
            settings.topic(topics.REQUESTED),
            key=key or uuid.uuid4().hex.encode(),
            value=value,
            on_delivery=lambda err, _: failures.append(str(err)) if err else None,
        )
    if producer.flush(30) != 0 or failures:
        raise RuntimeError(f"requests not acknowledged: {failures[:3]}")


def record_count(bootstrap: str, topic: str) -> int:
    """How many records the topic holds (the sum of its partitions' watermark spans)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            total += high - low
        return total
    finally:
        consumer.close()
