"""A batch of ``jobs.events`` messages → the JSONEachRow body of one ``job_events`` insert.

Owns decoding (a fast path for canonical events, ``JobEvent`` for the rest), the Kafka
position each row carries, and the submit/start times that terminal rows need for the
materialized views; ``JobTimes`` remembers those times for jobs in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from confluent_kafka import Message

from streams import wire
from streams.events import TERMINAL_EVENTS, EventType

JobKey = tuple[str, str]  # (tenant, job_id)
Times = tuple[datetime | None, datetime | None]  # (submitted_at, started_at)


class JobTimes:
    """Submit and start times of jobs in flight, so an outcome's durations need no query.

    Bounded: past ``capacity`` the oldest jobs are forgotten (their outcomes then
    look the times up in ``jobs_state``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._times: dict[JobKey, list[datetime | None]] = {}

    def queued(self, key: JobKey, ts: datetime) -> None:
        if self.capacity:
            self._entry(key)[0] = ts

    def running(self, key: JobKey, ts: datetime) -> None:
        if self.capacity:
            entry = self._entry(key)
            if entry[1] is None or ts < entry[1]:
                entry[1] = ts

    def pop(self, key: JobKey) -> Times | None:
        entry = self._times.pop(key, None)
        return (entry[0], entry[1]) if entry is not None else None

    def __len__(self) -> int:
        return len(self._times)

    def _entry(self, key: JobKey) -> list[datetime | None]:
        entry = self._times.get(key)
        if entry is None:
            if len(self._times) >= self.capacity:
                del self._times[next(iter(self._times))]
            entry = self._times[key] = [None, None]
        return entry


@dataclass
class BatchRows:
    """One batch as JSONEachRow lines for ``job_events``; terminal events wait for their job's times.

    A well-formed event travels as Kafka delivered it (ClickHouse parses it), with
    its Kafka position prepended; anything else is normalised through ``JobEvent``.
    Terminal events also carry ``submitted_at``/``started_at``: the materialized
    views turn them into ``job_results`` and ``job_outcomes`` rows in the same insert.
    """

    lines: list[bytes] = field(default_factory=list)
    terminals: list[tuple[int, JobKey, Times | None, bytes]] = field(default_factory=list)  # (line, job, seen, tail)

    def missing_times(self) -> list[JobKey]:
        """Jobs whose submit or start this sink did not see (before a restart, or evicted): look them up."""
        return sorted({key for _, key, times, _ in self.terminals if times is None or None in times})

    def body(self, looked_up: dict[JobKey, Times]) -> bytes:
        """The insert: every line, terminal ones stamped with the best times known."""
        lines = list(self.lines)
        for index, key, seen, tail in self.terminals:
            seen_submitted, seen_started = seen or (None, None)
            found_submitted, found_started = looked_up.get(key, (None, None))
            lines[index] = b'{"submitted_at":%s,"started_at":%s,%s' % (
                _json_time(seen_submitted or found_submitted),
                _json_time(seen_started or found_started),
                tail,
            )
        return b"\n".join(lines)


def build_rows(messages: list[Message], times: JobTimes, on_undecodable: Callable[[Message], None]) -> BatchRows:
    """Decode a batch (in partition, offset order) into lines; undecodable messages are skipped.

    A ``queued`` event can reach Kafka after its job finished (the API and the
    processors are different producers): that outcome then has no queue wait or
    end-to-end time (the ``jobs`` view, folded on read, still has them).
    """
    rows = BatchRows()
    for message in messages:
        try:
            event = wire.decode_event(message.value())
        except ValueError:
            on_undecodable(message)
            continue
        type_, tenant, job_id, ts = event.type, event.tenant, event.job_id, event.ts
        line = b'"kafka_partition":%d,"kafka_offset":%d,%s' % (message.partition(), message.offset(), event.raw[1:])
        if type_ is EventType.QUEUED:
            times.queued((tenant, job_id), ts)
        elif type_ is EventType.RUNNING:
            times.running((tenant, job_id), ts)
        elif type_ in TERMINAL_EVENTS:
            rows.terminals.append((len(rows.lines), (tenant, job_id), times.pop((tenant, job_id)), line))
        rows.lines.append(b"{" + line)
    return rows


def _json_time(ts: datetime | None) -> bytes:
    return orjson.dumps(ts) if ts is not None else b"null"
