"""Which of a job's events its streams show: a re-run never moves a job back.

In Kafka order an event is shown if it is ``queued``, or no terminal event came before it and
it raises its type's attempt (``running``/``retrying``) or the progress. The decision depends
only on the job's earlier events, so a resumed stream rebuilds it by feeding its history
through ``admit``, and ClickHouse applies the same rules in SQL
(``store.schema.visible_events``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from sse_gateway.entry import Entry

_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class _Marks:
    __slots__ = ("attempt", "retry", "progress", "finished")

    def __init__(self) -> None:
        self.attempt = 0  # highest `running` attempt so far
        self.retry = 0  # highest `retrying` attempt so far
        self.progress = -1.0  # highest progress so far
        self.finished = False  # a terminal event came


def _data(entry: Entry) -> dict:
    if entry.event is not None:
        return entry.event.data
    try:
        data = orjson.loads(entry.raw).get("data")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


class Visibility:
    """Marks per job (``capacity``: the most jobs remembered, oldest forgotten first; None: all).

    Feed a job's events in Kafka order; ``admit`` says whether a stream shows each one.
    """

    def __init__(self, capacity: int | None = None) -> None:
        self.capacity = capacity
        self._marks: OrderedDict[str, _Marks] = OrderedDict()

    def admit(self, entry: Entry) -> bool:
        if entry.type == "queued":
            return True
        marks = self._marks.get(entry.job_id)
        if marks is None:
            marks = self._marks[entry.job_id] = _Marks()
            if self.capacity is not None and len(self._marks) > self.capacity:
                self._marks.popitem(last=False)
        elif self.capacity is not None:
            self._marks.move_to_end(entry.job_id)
        if marks.finished:
            return False
        if entry.type in _TERMINAL:
            marks.finished = True
        elif entry.type == "running":
            attempt = max(1, int(_number(_data(entry).get("attempt"), 1)))
            if attempt <= marks.attempt:
                return False
            marks.attempt = attempt
        elif entry.type == "retrying":
            attempt = max(1, int(_number(_data(entry).get("attempt"), 1)))
            if attempt <= marks.retry:
                return False
            marks.retry = attempt
        elif entry.type == "progress":
            progress = _number(_data(entry).get("progress"), 0.0)
            if progress <= marks.progress:
                return False
            marks.progress = progress
        return True

    def __len__(self) -> int:
        return len(self._marks)


def shown_seqs(entries: list[Entry]) -> set[int]:
    """The seqs of one job's known events that its stream shows (``entries``: one per seq, any order)."""
    visibility = Visibility()
    return {e.seq for e in sorted(entries, key=lambda e: (e.partition, e.offset)) if visibility.admit(e)}
