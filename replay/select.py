"""Finding past job requests in ``jobs.requested``: time range → offsets, then a filtered scan.

The time range is resolved per partition with offsets-for-times (the first offset
whose timestamp is at or after the bound), and each record's own timestamp is
checked too, so exactly the requests in ``[since, until)`` are picked. Requests a
replay emitted are skipped unless named by job id, so replaying a range twice never
re-runs the re-runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer, KafkaError, TopicPartition

from replay.models import PartitionRange, ReplaySelection
from streams import topics
from streams.events import JobRequested
from streams.kafka_config import KafkaConnection
from streams.reader import partitions_of, watermarks
from streams.wire import decode_request

logger = logging.getLogger(__name__)

StatusLookup = Callable[[str, list[str]], dict[str, str]]  #: (tenant, job ids) -> job id -> status


@dataclass(frozen=True)
class Found:
    partition: int
    offset: int
    request: JobRequested


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


class RequestScanner:
    """Reads ranges of ``jobs.requested`` with its own consumer (no group, nothing committed).

    Not a ``KafkaReader``: a bounded scan, pulled on the caller's thread, that stops at the ranges' ends
    and fails on a consumer error (a replay must not silently skip requests).
    """

    def __init__(self, kafka: KafkaConnection, topic: str, timeout_s: float = 10.0) -> None:
        self.topic = topic
        self._consumer = Consumer(
            kafka.consumer_config(topics.reader_group(self.topic), **{"enable.partition.eof": True})
        )
        self._timeout_s = timeout_s

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> RequestScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def partitions(self) -> list[int]:
        return partitions_of(self._consumer, self.topic, self._timeout_s)

    def ends(self) -> dict[int, int]:
        """Each partition's end offset now (where the next record will land)."""
        return {
            p: high
            for p, (_, high) in watermarks(self._consumer, self.topic, self.partitions(), self._timeout_s).items()
        }

    def ranges(self, since: datetime | None, until: datetime | None) -> list[PartitionRange]:
        """Per partition, the offsets ``[start, end)`` holding requests stamped in ``[since, until)``."""
        result = []
        for p, (low, high) in watermarks(self._consumer, self.topic, self.partitions(), self._timeout_s).items():
            start = self._offset_at(p, since, high) if since is not None else low
            end = self._offset_at(p, until, high) if until is not None else high
            start = max(start, low)
            result.append(PartitionRange(partition=p, start=start, end=max(start, end), position=start))
        return result

    def _offset_at(self, partition: int, ts: datetime, high: int) -> int:
        if _ms(ts) <= 0:  # before 1970: everything is later (and -1/-2 mean latest/earliest to Kafka)
            return 0
        (found,) = self._consumer.offsets_for_times(
            [TopicPartition(self.topic, partition, _ms(ts))], timeout=self._timeout_s
        )
        return found.offset if found.offset >= 0 else high  # -1: no record that late

    def scan(self, ranges: Iterable[PartitionRange]) -> Iterator[Found]:
        """Every decodable request in the ranges, from each range's ``position``; per partition in order."""
        todo = {r.partition: r for r in ranges if r.position < r.end}
        if not todo:
            return
        self._consumer.assign([TopicPartition(self.topic, p, r.position) for p, r in todo.items()])
        try:
            while todo:
                for message in self._consumer.consume(500, timeout=1.0):
                    partition = message.partition()
                    if partition not in todo:
                        continue
                    if message.error():
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            todo.pop(partition)  # the range reaches past what is left (retention)
                            continue
                        raise RuntimeError(f"reading {self.topic}: {message.error()}")
                    offset = message.offset()
                    end = todo[partition].end
                    if offset >= end:
                        todo.pop(partition)
                        continue
                    try:
                        request = decode_request(message.value())
                    except Exception:
                        logger.warning("skipping an undecodable request at %s/%d:%d", self.topic, partition, offset)
                    else:
                        yield Found(partition, offset, request.model_copy(update={"ts": _timestamp(message, request)}))
                    if offset + 1 >= end:
                        todo.pop(partition)
        finally:
            self._consumer.unassign()


def _timestamp(message, request: JobRequested) -> datetime:
    """The record's Kafka timestamp (what offsets-for-times used), falling back to the request's own."""
    kind, ms = message.timestamp()
    if ms is None or ms < 0:
        return request.ts
    return datetime.fromtimestamp(ms / 1000, tz=request.ts.tzinfo)


class Filter:
    """Which scanned requests a replay picks: tenant, time, kind, job ids, current status."""

    def __init__(self, tenant: str, selection: ReplaySelection, statuses: StatusLookup | None) -> None:
        self.tenant = tenant
        self.selection = selection
        self._since = _ms(selection.since) if selection.since else None
        self._until = _ms(selection.until) if selection.until else None
        self._kinds = set(selection.kinds)
        self._ids = set(selection.job_ids)
        self._statuses = {s.value for s in selection.statuses}
        if self._statuses and statuses is None:
            raise ValueError("a status filter needs ClickHouse")
        self._lookup = statuses

    def candidate(self, found: Found) -> bool:
        """Every test but the status one (which needs a ClickHouse round trip per chunk)."""
        request = found.request
        if request.tenant != self.tenant:
            return False
        if self._ids:
            if request.job_id not in self._ids:
                return False
        elif request.replay_of is not None:
            return False
        if self._kinds and request.kind not in self._kinds:
            return False
        ms = _ms(request.ts)
        if self._since is not None and ms < self._since:
            return False
        if self._until is not None and ms >= self._until:
            return False
        return True

    def by_status(self, found: list[Found]) -> list[Found]:
        if not self._statuses or not found:
            return found
        assert self._lookup is not None
        current = self._lookup(self.tenant, [f.request.job_id for f in found])
        return [f for f in found if current.get(f.request.job_id) in self._statuses]


def chunks(found: Iterable[Found], size: int) -> Iterator[list[Found]]:
    chunk: list[Found] = []
    for item in found:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
