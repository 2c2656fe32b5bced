"""Cancellation: every worker tails ``jobs.control`` and remembers recent cancels.

The tail is a ``KafkaReader`` assigned to every partition from the beginning (no
consumer group: each worker must see every cancel, whoever owns the job). The
worker holds its requests back until the tail is ``loaded`` (has read what was on
the topic when it started), so a cancel sent while a job waited in Kafka is never
missed by the worker that picks it up. Commands go to the event loop.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

from confluent_kafka import Message

from streams.control import CancelCommand, load_command
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader

logger = logging.getLogger(__name__)


class CancelledJobs:
    """The last ``capacity`` cancelled job ids (and their tenants), oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()

    def add(self, job_id: str, tenant: str) -> None:
        self._ids[job_id] = tenant
        self._ids.move_to_end(job_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def cancelled(self, job_id: str, tenant: str) -> bool:
        return self._ids.get(job_id) == tenant

    def __len__(self) -> int:
        return len(self._ids)


class ControlTail(KafkaReader):
    """Reads every partition of ``jobs.control`` and calls ``on_cancel`` on the loop for each cancel."""

    attach_on_thread = True  # started on the worker's event loop: metadata requests must not block it

    def __init__(
        self, kafka: KafkaConnection, topic: str, group_id: str, on_cancel: Callable[[CancelCommand], None]
    ) -> None:
        # A group id is required by the client, but this consumer never joins or commits.
        super().__init__(kafka, topic, group_id=group_id, name="control-tail")
        self._on_cancel = on_cancel
        self.seen = 0

    def handle_message(self, message: Message) -> None:
        self.seen += 1
        try:
            command = load_command(message.value())
        except ValueError:
            logger.warning("skipping an unreadable control record at offset %d", message.offset())
            return
        self.to_loop(self._on_cancel, command)
