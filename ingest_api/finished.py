"""The API's own light tail of ``jobs.events`` for long-polls, where no gateway runs in the process.

With the gateway in the same process (``jobstream up``), its fanout already sees every event and
tells ``JobWaits``; an API-only process (roles split, as in docker-compose) runs this instead:
one consumer for the whole process (never one per request), all partitions assigned from their
end (no consumer group, nothing committed), that decodes each record and hands the events to the
loop, in one hop per chunk: the waits take the terminal ones, read-your-writes (``RecentJobs``) the
events of jobs this process accepted, so a woken wait answers from memory, not from the store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Message

from streams import topics, wire
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader

logger = logging.getLogger(__name__)


class FinishedTail(KafkaReader):
    """Calls ``on_events(events)`` on the event loop with each chunk's events."""

    chunk_size = 500

    def __init__(self, kafka: KafkaConnection, topic: str, on_events: Callable[[list[wire.WireEvent]], None]) -> None:
        super().__init__(
            kafka,
            topic,
            group_id=topics.reader_group(topic),  # never joins or commits
            name="api-finished-tail",
            **{"enable.partition.eof": False, "fetch.wait.max.ms": 100},
        )
        self._on_events = on_events

    def start_offset(self, partition: int, low: int, high: int) -> int:
        return high  # only what happens from now on: what was before is in the store

    def handle(self, messages: list[Message]) -> None:
        events = []
        for message in messages:
            try:
                events.append(wire.decode_event(message.value()))
            except ValueError as exc:
                logger.error("skipping record %s[%d]@%d: %s", self.topic, message.partition(), message.offset(), exc)
        if events:
            self.to_loop(self._on_events, events)

    def on_loaded(self) -> None:
        """Starting at the end: nothing to load."""
