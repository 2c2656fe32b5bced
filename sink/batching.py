"""The messages waiting for the sink's next batch: when a batch is due and how it is cut.

A batch is due at ``JOBSTREAM_SINK_BATCH_MAX_SIZE`` messages or when the oldest has waited
``JOBSTREAM_SINK_BATCH_MAX_WAIT_MS``. It is a prefix of each partition's pending messages (so
every batch is a contiguous offset range per partition, which its intent names), from at most
``MAX_PARTITIONS_PER_BATCH`` partitions, in (partition, offset) order.
"""

from __future__ import annotations

import time
from collections.abc import Container

from confluent_kafka import Message

from sink.intents import MAX_PARTITIONS_PER_BATCH


class Pending:
    """Admitted messages not yet in a batch, in arrival order; touched by the sink thread only."""

    def __init__(self, max_size: int, max_wait_s: float) -> None:
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.messages: list[Message] = []
        self.since: float | None = None  # monotonic time the oldest pending message arrived

    def __len__(self) -> int:
        return len(self.messages)

    def extend(self, messages: list[Message]) -> None:
        self.messages.extend(messages)
        if self.messages and self.since is None:
            self.since = time.monotonic()

    def due(self) -> bool:
        if not self.messages:
            return False
        if len(self.messages) >= self.max_size:
            return True
        return time.monotonic() - (self.since or 0) >= self.max_wait_s

    def poll_timeout(self) -> float:
        """How long the sink may wait for more messages before the batch in hand is due."""
        timeout = min(self.max_wait_s, 0.5)
        if self.since is not None:
            timeout = max(0.001, self.since + self.max_wait_s - time.monotonic())
        return timeout

    def take(self) -> list[Message]:
        """The next batch (possibly empty); the rest stays pending."""
        size = self.max_size
        batch: list[Message] = []
        rest: list[Message] = []
        chosen: set[int] = set()
        cut: set[int] = set()
        for message in self.messages:
            p = message.partition()
            if p not in cut and len(batch) < size and (p in chosen or len(chosen) < MAX_PARTITIONS_PER_BATCH):
                chosen.add(p)
                batch.append(message)
            else:
                cut.add(p)
                rest.append(message)
        self.messages = rest
        self.since = time.monotonic() if rest else None
        batch.sort(key=lambda m: (m.partition(), m.offset()))
        return batch

    def drop(self, partitions: Container[int], *, restart: bool = False) -> None:
        """Forget the messages of ``partitions``; ``restart``: what remains starts waiting anew."""
        self.messages = [m for m in self.messages if m.partition() not in partitions]
        if not self.messages:
            self.since = None
        elif restart:
            self.since = time.monotonic()
