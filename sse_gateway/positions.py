"""Positions in ``jobs.events``: the ``id:`` of the multi-job stream.

A position is, for every partition, the next offset not yet covered, written
``"0:124,1:45,2:0"``. An event's id is the gateway's position right after that
event: every earlier record of every partition was either sent or filtered
out, so a client resuming there misses nothing and gets nothing twice. It is
plain Kafka offsets, so any gateway (or a restarted one) understands it.
"""

from __future__ import annotations

from collections.abc import Sequence

from streams.errors import JobstreamError

MAX_POSITION_CHARS = 4096


class BadPosition(JobstreamError, ValueError):
    """A Last-Event-ID that is not a position of this topic."""


def encode(position: Sequence[int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in enumerate(position))


def parse(text: str, partitions: int) -> list[int]:
    """``"0:12,1:3"`` → ``[12, 3]``; every partition must be named once."""
    if len(text) > MAX_POSITION_CHARS:
        raise BadPosition("too long")
    found: dict[int, int] = {}
    for item in text.split(","):
        partition, sep, offset = item.strip().partition(":")
        if not sep or not partition.isdigit() or not offset.isdigit():
            raise BadPosition(f"expected 'partition:offset,...', got {item!r}")
        if int(partition) in found:
            raise BadPosition(f"partition {partition} named twice")
        found[int(partition)] = int(offset)
    missing = [p for p in range(partitions) if p not in found]
    if missing:
        raise BadPosition(f"no offset for partition(s) {missing} (the topic has {partitions})")
    return [found[p] for p in range(partitions)]


def at_least(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Element-wise maximum."""
    return [max(x, y) for x, y in zip(a, b, strict=False)]
