"""Cancellation: every worker tails ``jobs.control`` and remembers recent cancels.

The tail is a plain confluent consumer on a thread, assigned to every
partition from the beginning (no consumer group: each worker must see every
cancel, whoever owns the job). The worker holds its requests back until the
tail has caught up with what was on the topic when it started, so a cancel sent
while a job waited in Kafka is never missed by the worker that picks it up.
Commands go to the event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import OrderedDict
from typing import Callable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams import topics
from streams.control import CancelCommand, load_command
from streams.kafka_config import consumer_config
from streams.settings import Settings

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


class ControlTail:
    """Reads every partition of ``jobs.control`` and calls ``on_cancel`` on the loop for each cancel."""

    def __init__(self, bootstrap: str, settings: Settings, on_cancel: Callable[[CancelCommand], None]) -> None:
        self._topic = settings.topic(topics.CONTROL)
        # A group id is required by the client, but this consumer never joins or commits.
        self._consumer = Consumer(consumer_config(
            bootstrap, settings.topic(f"jobstream-control-{uuid.uuid4().hex}"), settings,
            **{"enable.partition.eof": True},
        ))
        self._on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-tail", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.caught_up = asyncio.Event()
        self.seen = 0

    def start(self) -> "ControlTail":
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        assert self._loop is not None
        try:
            partitions = self._consumer.list_topics(self._topic, timeout=30).topics[self._topic].partitions
            self._consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            behind = set(partitions)
            while not self._stop.is_set():
                for message in self._consumer.consume(500, timeout=0.2):
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            behind.discard(message.partition())
                        else:
                            logger.warning("control tail: %s", error)
                        continue
                    self.seen += 1
                    try:
                        command = load_command(message.value())
                    except ValueError:
                        logger.warning("skipping an unreadable control record at offset %d", message.offset())
                        continue
                    self._loop.call_soon_threadsafe(self._on_cancel, command)
                if not behind and not self.caught_up.is_set():
                    self._loop.call_soon_threadsafe(self.caught_up.set)
        except RuntimeError:  # the loop closed under us: shutting down
            pass
        except Exception:
            logger.exception("control tail stopped; cancels will not reach this worker")
            self._loop.call_soon_threadsafe(self.caught_up.set)
        finally:
            self._consumer.close()
