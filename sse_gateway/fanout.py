"""One Kafka tail per gateway process, fanned out in memory to every SSE subscriber.

A consumer thread reads ``jobs.events`` from the end (no consumer group: every
gateway sees every event) and hands each event to the event loop, which puts it
on the bounded queue of each subscriber of that job. A subscriber whose queue is
full is marked ``overflowed`` and dropped; it resumes by ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from typing import Callable

from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from streams import topics
from streams.events import JobEvent, load_event
from streams.kafka_config import consumer_config
from streams.settings import Settings

logger = logging.getLogger(__name__)


class Subscription:
    def __init__(self, job_id: str, maxsize: int) -> None:
        self.job_id = job_id
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize)
        self.overflowed = False


class Fanout:
    def __init__(self, bootstrap: str, settings: Settings, observers: list[Callable[[JobEvent], None]] | None = None) -> None:
        self._settings = settings
        self._observers = observers or []
        self._topic = settings.topic(topics.EVENTS)
        self._consumer = Consumer(consumer_config(bootstrap, "jobstream-sse-gateway", settings,
                                                  **{"enable.partition.eof": False}))
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sse-fanout", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> "Fanout":
        self._loop = asyncio.get_running_loop()
        metadata = self._consumer.list_topics(self._topic, timeout=10)
        partitions = metadata.topics[self._topic].partitions
        self._consumer.assign([TopicPartition(self._topic, p, OFFSET_END) for p in partitions])
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def subscribe(self, job_id: str) -> Subscription:
        sub = Subscription(job_id, self._settings.sse_queue_size)
        self._subs[job_id].add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.job_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.job_id]

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    def _run(self) -> None:
        assert self._loop is not None
        while not self._stop.is_set():
            messages = self._consumer.consume(500, timeout=0.2)
            events = []
            for message in messages:
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        logger.warning("fanout consumer error: %s", message.error())
                    continue
                try:
                    events.append(load_event(message.value()))
                except ValueError:
                    logger.error("skipping undecodable event at offset %d", message.offset())
            if events:
                self._loop.call_soon_threadsafe(self._dispatch, events)

    def _dispatch(self, events: list[JobEvent]) -> None:
        for event in events:
            for observe in self._observers:
                observe(event)
            for sub in list(self._subs.get(event.job_id, ())):
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.overflowed = True
                    self.unsubscribe(sub)
