"""The API's own light tail of ``jobs.events`` for long-polls, where no gateway runs in the process.

With the gateway in the same process (``jobstream up``), its fanout already sees every event and
tells ``JobWaits``; an API-only process (roles split, as in docker-compose) runs this instead:
one consumer for the whole process (never one per request), all partitions assigned from their
end (no consumer group, nothing committed), that decodes each record and hands only the terminal
events to the loop, in one hop per chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Message

from streams import topics, wire
from streams.events import TERMINAL_EVENTS, JobEvent
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader

logger = logging.getLogger(__name__)


class FinishedTail(KafkaReader):
    """Calls ``on_finished(events)`` on the event loop with each chunk's terminal events."""

    chunk_size = 500

    def __init__(self, kafka: KafkaConnection, topic: str, on_finished: Callable[[list[JobEvent]], None]) -> None:
        super().__init__(
            kafka,
            topic,
            group_id=topics.reader_group(topic),  # never joins or commits
            name="api-finished-tail",
            **{"enable.partition.eof": False, "fetch.wait.max.ms": 100},
        )
        self._on_finished = on_finished

    def start_offset(self, partition: int, low: int, high: int) -> int:
        return high  # only what happens from now on: what was before is in the store

    def handle(self, messages: list[Message]) -> None:
        finished = []
        for message in messages:
            try:
                event = wire.decode_event(message.value())
            except ValueError as exc:
                logger.error("skipping record %s[%d]@%d: %s", self.topic, message.partition(), message.offset(), exc)
                continue
            if event.type in TERMINAL_EVENTS:
                finished.append(event.model())
        if finished:
            self.to_loop(self._on_finished, finished)

    def on_loaded(self) -> None:
        """Starting at the end: nothing to load."""
