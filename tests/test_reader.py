"""The background Kafka reader (streams.reader) and consumer lag (streams.lag), against the real broker."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka_config import KafkaConnection
from streams.lag import committed_offsets, consumer_lag, group_lag
from streams.reader import KafkaReader
from streams.settings import Settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


class Topic:
    def __init__(self, settings: Settings, partitions: int) -> None:
        self.settings = settings
        self.kafka = KafkaConnection.from_settings(settings)
        self.name = settings.topic(f"reader-{uuid.uuid4().hex[:8]}")
        self.partitions = partitions
        self.admin = AdminClient(self.kafka.admin_config())
        for future in self.admin.create_topics([NewTopic(self.name, partitions, 1)]).values():
            future.result(30)
        self.producer = Producer(self.kafka.producer_config())

    def send(self, *values: bytes, partition: int | None = None) -> None:
        for i, value in enumerate(values):
            where = i % self.partitions if partition is None else partition
            self.producer.produce(self.name, value=value, partition=where)
        assert self.producer.flush(30) == 0


@pytest.fixture
def topic(settings: Settings) -> Iterator[Topic]:
    made = Topic(settings, 3)
    yield made
    made.admin.delete_topics([made.name])


class Collector(KafkaReader):
    """Keeps every value it reads; ``poison`` values make ``handle_message`` raise."""

    def __init__(self, topic: Topic, poison: bytes = b"poison", slow_s: float = 0.0) -> None:
        super().__init__(topic.kafka, topic.name, group_id="unused", name="collector")
        self.values: list[bytes] = []
        self.at_loaded: list[bytes] | None = None
        self.threads: set[str] = set()
        self.finished = False
        self._poison = poison
        self._slow_s = slow_s
        self.handling = threading.Event()

    def handle_message(self, message: Message) -> None:
        self.handling.set()
        self.threads.add(threading.current_thread().name)
        time.sleep(self._slow_s)
        if message.value() == self._poison:
            raise ValueError("a record this reader cannot take")
        self.values.append(message.value())

    def on_loaded(self) -> None:
        self.at_loaded = list(self.values)

    def finish(self) -> None:
        self.finished = True


def test_reads_what_was_there_then_tails(topic: Topic):
    topic.send(*[b"old-%d" % i for i in range(30)])
    reader = Collector(topic).start()
    try:
        assert reader.loaded.wait(30)
        assert sorted(reader.at_loaded or []) == sorted(b"old-%d" % i for i in range(30))  # all of it, before loaded
        topic.send(b"new-1", b"new-2")
        wait_until(lambda: {b"new-1", b"new-2"} <= set(reader.values), 30, message="the tail")
        assert reader.threads == {"collector"} and reader.running
    finally:
        reader.stop()
    assert not reader.running and reader.finished


def test_an_empty_topic_is_loaded_at_start(topic: Topic):
    reader = Collector(topic).start()
    try:
        assert reader.loaded.is_set()  # no wait: nothing to read
    finally:
        reader.stop()


def test_records_deleted_unread_do_not_hold_loaded_back(topic: Topic):
    """A partition whose records all expired (low == high > 0) has nothing to read: caught up at once."""
    topic.send(*[b"x"] * 6)
    deleted = topic.admin.delete_records([TopicPartition(topic.name, p, -1) for p in range(topic.partitions)])
    for future in deleted.values():
        future.result(30)
    reader = Collector(topic).start()
    try:
        assert reader.loaded.wait(10) and reader.values == []
    finally:
        reader.stop()


def test_one_bad_record_never_stops_the_reader(topic: Topic):
    topic.send(b"a", b"poison", b"b", partition=0)
    reader = Collector(topic).start()
    try:
        assert reader.loaded.wait(30)  # the bad record counts as read
        topic.send(b"c", partition=0)
        wait_until(lambda: reader.values == [b"a", b"b", b"c"], 30, message="the records around the bad one")
    finally:
        reader.stop()


def test_a_failing_round_is_logged_and_tried_again(topic: Topic, caplog: pytest.LogCaptureFixture):
    class Flaky(Collector):
        error_pause_s = 0.05
        failures = 2

        def round(self) -> None:
            if self.failures:
                self.failures -= 1
                raise RuntimeError("the broker said something odd")
            super().round()

    topic.send(b"a")
    reader = Flaky(topic).start()
    try:
        assert reader.loaded.wait(30) and reader.values == [b"a"]
        assert sum("a round failed" in r.message for r in caplog.records) == 2
    finally:
        reader.stop()


def test_stop_while_idle_or_while_handling_a_chunk(topic: Topic):
    idle = Collector(topic).start()
    started = time.monotonic()
    idle.stop()
    assert time.monotonic() - started < 2 and not idle.running and idle.finished

    topic.send(*[b"v%d" % i for i in range(20)], partition=0)
    busy = Collector(topic, slow_s=0.05).start()
    assert busy.handling.wait(30)
    busy.stop()  # mid-chunk: the chunk in hand is finished, then finish() runs, then the consumer closes
    assert not busy.running and busy.finished and busy.values == [b"v%d" % i for i in range(20)]


def test_stop_before_start_closes_the_consumer(topic: Topic):
    reader = Collector(topic)
    reader.stop()
    assert not reader.running


def test_attach_on_thread_does_not_block_start_and_hands_work_to_the_loop(topic: Topic):
    topic.send(b"a", b"b")

    class ToLoop(Collector):
        attach_on_thread = True

        def __init__(self, topic: Topic) -> None:
            super().__init__(topic)
            self.on_loop: list[tuple[bytes, bool]] = []

        def handle_message(self, message: Message) -> None:
            value = message.value()
            self.to_loop(lambda: self.on_loop.append((value, loop_thread == threading.get_ident())))
            self.to_loop(self.values.append, value, wait=True)

    loop_thread = threading.get_ident()

    async def main() -> ToLoop:
        reader = ToLoop(topic).start()
        try:
            assert await reader.wait_loaded(30)
            assert sorted(reader.values) == [b"a", b"b"]
            assert sorted(reader.on_loop) == [(b"a", True), (b"b", True)]
        finally:
            await asyncio.to_thread(reader.stop)
        return reader

    reader = asyncio.run(main())
    assert not reader.running


def test_to_loop_without_a_loop_says_so(topic: Topic):
    reader = Collector(topic)
    with pytest.raises(RuntimeError, match="event loop"):
        reader.to_loop(print)
    reader.stop()


def test_consumer_lag_counts_what_the_group_has_not_committed(topic: Topic):
    topic.send(*[b"r"] * 5, partition=0)
    topic.send(*[b"r"] * 4, partition=1)
    group = f"lag-{uuid.uuid4().hex[:8]}"
    consumer = Consumer(topic.kafka.consumer_config(group))
    try:
        assert group_lag(topic.kafka, group, topic.name) == 9  # nothing committed yet
        consumer.commit(offsets=[TopicPartition(topic.name, 0, 3)], asynchronous=False)
        assert committed_offsets(consumer, topic.name, [0, 1, 2]) == [3, -1, -1]
        lags = consumer_lag(consumer, topic.name)
        assert [(p.partition, p.committed, p.low, p.high, p.lag) for p in lags] == [
            (0, 3, 0, 5, 2),
            (1, -1, 0, 4, 4),
            (2, -1, 0, 0, 0),
        ]
        assert group_lag(topic.kafka, group, topic.name) == 6
    finally:
        consumer.close()
