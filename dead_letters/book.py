"""The dead letters of ``jobs.dead-letters``, indexed in memory for listing; originals stay in Kafka.

Dead letters are rare and their originals can be as large as a Kafka message, so each API
process reads the topic once from the beginning and tails it, keeping only what a list shows
(reason, error, job, kind, tenant, source, time): at most ``max_kept``, the oldest forgotten
first. A re-drive fetches the one original record by its offset (``fetch``). The list reaches
as far back as the topic's retention.

A re-drive writes a record of its own to the same topic (``streams.dead_letters.redrive_record``)
in the flush of its new job: reading it back marks the letter re-driven and remembers the
caller's ``Idempotency-Key``, so both survive a restart of the API (as far back as retention).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streams import dead_letters as fmt
from streams import topics
from streams.errors import JobstreamError
from streams.kafka_config import KafkaConnection
from streams.reader import KafkaReader
from streams.settings import Settings

logger = logging.getLogger(__name__)

SortKey = tuple[int, int, int]  # (created_at in ms, partition, offset): newest last


@dataclass(frozen=True)
class DeadLetterConfig:
    topic: str  #: the dead-letter topic, with the prefix
    max_kept: int  #: JOBSTREAM_DEAD_LETTERS_MAX_KEPT
    operators: frozenset[str]  #: JOBSTREAM_DEAD_LETTER_TENANTS: tenants that see every dead letter
    key_ttl_s: float = 86_400.0  #: JOBSTREAM_IDEMPOTENCY_TTL_S: how long a re-drive's Idempotency-Key is honoured
    max_keys: int = 1_000_000  #: JOBSTREAM_IDEMPOTENCY_MAX_KEYS: most re-drive keys held in memory

    @classmethod
    def from_settings(cls, settings: Settings) -> DeadLetterConfig:
        from streams import topics

        return cls(
            settings.topic(topics.DEAD_LETTERS),
            settings.dead_letters_max_kept,
            frozenset(t.strip() for t in settings.dead_letter_tenants.split(",") if t.strip()),
            settings.idempotency_ttl_s,
            settings.idempotency_max_keys,
        )


@dataclass(frozen=True)
class Redrive:
    """That a dead letter was re-driven: its new jobs (the latest last) and when it last was."""

    job_ids: tuple[str, ...]
    at: datetime


@dataclass(frozen=True)
class RedriveKey:
    """What a re-drive with an ``Idempotency-Key`` made: a retry with the key answers with this job."""

    job_id: str
    dead_letter_id: str
    fingerprint: str
    created_at: float  #: unix seconds


@dataclass(frozen=True)
class DeadLetter:
    """What the list shows of one dead letter (the original bytes are fetched only to re-drive)."""

    id: str  #: ``<partition>-<offset>`` in the dead-letter topic
    partition: int
    offset: int
    job_id: str | None
    tenant: str | None  #: None: the request was unreadable (only operators see it)
    kind: str | None
    reason: str
    error: str
    source: dict[str, int] | None  #: where the request was: partition and offset in jobs.requested
    created_at: datetime

    @property
    def key(self) -> SortKey:
        return (int(self.created_at.timestamp() * 1000), self.partition, self.offset)


class BadCursor(JobstreamError, ValueError):
    """The cursor was not made by this API."""


def encode_cursor(key: SortKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    try:
        key = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except Exception:
        raise BadCursor(cursor) from None
    if not (isinstance(key, list) and len(key) == 3 and all(type(k) is int and 0 <= k < 2**63 for k in key)):
        raise BadCursor(cursor)
    return key[0], key[1], key[2]


def parse_id(dead_letter_id: str) -> tuple[int, int] | None:
    """``<partition>-<offset>`` → the pair, or None for anything else."""
    partition, sep, offset = dead_letter_id.partition("-")
    if not sep or not (partition.isascii() and partition.isdigit() and offset.isascii() and offset.isdigit()):
        return None
    if len(partition) > 6 or len(offset) > 19:
        return None
    return int(partition), int(offset)


def entry_of(partition: int, offset: int, record: dict) -> DeadLetter:
    """A dead letter's list entry from its decoded record (``fmt.load``)."""
    original: bytes = record["original"]
    kind = record.get("kind")
    if not isinstance(kind, str):  # records written before the kind was: read it from the request
        kind = _field(original, "kind")
    source = record.get("source")
    try:
        created = datetime.fromisoformat(record.get("ts") or "")
    except (TypeError, ValueError):
        created = datetime.fromtimestamp(0, UTC)
    return DeadLetter(
        id=f"{partition}-{offset}",
        partition=partition,
        offset=offset,
        job_id=record.get("job_id") if isinstance(record.get("job_id"), str) else None,
        tenant=record.get("tenant") if isinstance(record.get("tenant"), str) else None,
        kind=None if kind in (None, "unknown") else kind,
        reason=str(record.get("reason", "")),
        error=str(record.get("error", "")),
        source={"partition": int(source["partition"]), "offset": int(source["offset"])}
        if isinstance(source, dict)
        else None,
        created_at=created if created.tzinfo else created.replace(tzinfo=UTC),
    )


def _field(original: bytes, name: str) -> str | None:
    try:
        data = orjson.loads(original)
    except orjson.JSONDecodeError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


_ALL = object()  # the key of the list of every entry, next to one list per tenant


class DeadLetterIndex:
    """The list entries, oldest first by ``key``, in one list of all and one per tenant (so a tenant's
    page costs O(log n + limit) however few of the entries are its), bounded by ``max_kept``; safe
    from any thread."""

    def __init__(self, max_kept: int) -> None:
        self.max_kept = max_kept
        self._lock = threading.Lock()
        self._by_id: dict[str, DeadLetter] = {}
        self._lists: dict[object, list[tuple[SortKey, str]]] = {_ALL: []}  # each sorted by key: oldest first
        # re-drives by dead letter id, bounded like the entries (a mark may come before its letter is read)
        self._redrives: OrderedDict[str, Redrive] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, entry: DeadLetter) -> None:
        with self._lock:
            if entry.id in self._by_id:
                return
            self._by_id[entry.id] = entry
            item = (entry.key, entry.id)
            bisect.insort(self._lists[_ALL], item)
            bisect.insort(self._lists.setdefault(entry.tenant, []), item)
            while len(self._by_id) > self.max_kept:  # the oldest of all is the oldest of its tenant's too
                _, oldest = self._lists[_ALL].pop(0)
                tenant = self._by_id.pop(oldest).tenant
                own = self._lists[tenant]
                own.pop(0)
                if not own:
                    del self._lists[tenant]

    def get(self, dead_letter_id: str) -> DeadLetter | None:
        with self._lock:
            return self._by_id.get(dead_letter_id)

    def mark(self, dead_letter_id: str, job_id: str, at: datetime) -> None:
        """Record a re-drive (idempotent: the same job counts once, as when a record is read back)."""
        with self._lock:
            known = self._redrives.get(dead_letter_id)
            if known is not None and job_id in known.job_ids:
                return
            job_ids = (*known.job_ids, job_id) if known is not None else (job_id,)
            self._redrives[dead_letter_id] = Redrive(job_ids, max(at, known.at) if known is not None else at)
            self._redrives.move_to_end(dead_letter_id)
            while len(self._redrives) > self.max_kept:
                self._redrives.popitem(last=False)

    def unmark(self, dead_letter_id: str, job_id: str) -> None:
        """Forget a re-drive whose job did not land after all."""
        with self._lock:
            known = self._redrives.get(dead_letter_id)
            if known is None or job_id not in known.job_ids:
                return
            rest = tuple(j for j in known.job_ids if j != job_id)
            if rest:
                self._redrives[dead_letter_id] = Redrive(rest, known.at)
            else:
                del self._redrives[dead_letter_id]

    def redrive_of(self, dead_letter_id: str) -> Redrive | None:
        with self._lock:
            return self._redrives.get(dead_letter_id)

    def page(
        self, limit: int, cursor: str | None, tenant: object = _ALL, redriven: bool | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """Newest first: up to ``limit`` entries (of ``tenant``; default all) older than the cursor's,
        and the next page's cursor (None on the last page). ``redriven``: only those that were (True)
        or were not (False) re-driven; this filter walks past the others."""
        before = decode_cursor(cursor) if cursor is not None else None
        with self._lock:
            items = self._lists.get(tenant, [])
            end = len(items) if before is None else bisect.bisect_left(items, (before, ""))
            if redriven is None:
                chosen = [self._by_id[items[i][1]] for i in range(end - 1, max(end - limit - 1, 0) - 1, -1)]
            else:
                chosen = []
                for i in range(end - 1, -1, -1):
                    if (items[i][1] in self._redrives) is redriven:
                        chosen.append(self._by_id[items[i][1]])
                        if len(chosen) > limit:
                            break
        if len(chosen) > limit:
            return chosen[:limit], encode_cursor(chosen[limit - 1].key)
        return chosen, None


class DeadLetterBook(KafkaReader):
    """Reads the topic into a ``DeadLetterIndex`` on its own thread; ``get`` is the index's."""

    chunk_size = 100  #: records in hand at once: each may carry an original as large as a Kafka message

    def __init__(self, kafka: KafkaConnection, config: DeadLetterConfig) -> None:
        super().__init__(
            kafka, config.topic, group_id=topics.reader_group(config.topic), name=f"dead-letters-{config.topic}"
        )
        self.config = config
        self._kafka = kafka
        self.index = DeadLetterIndex(config.max_kept)
        self.get = self.index.get
        self.redrive_of = self.index.redrive_of
        self._keys: OrderedDict[tuple[str, str], RedriveKey] = OrderedDict()
        self._keys_lock = threading.Lock()
        self._inflight: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # the lock, and its users

    def handle_message(self, message: Message) -> None:
        partition, offset = message.partition(), message.offset()
        value = message.value() or b""
        try:
            record = fmt.load(value)
        except ValueError:
            try:
                self.apply_redrive(fmt.load_redrive(value))
            except ValueError:
                logger.warning(
                    "skipping a record that is not a dead letter at %s[%d]@%d", self.topic, partition, offset
                )
            return
        self.index.add(entry_of(partition, offset, record))

    def apply_redrive(self, record: dict) -> None:
        """Take in a re-drive record (read back, or just acknowledged): mark the letter, keep the key."""
        try:
            at = datetime.fromisoformat(record.get("ts") or "")
        except (TypeError, ValueError):
            at = datetime.now(UTC)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        self.index.mark(record["dead_letter_id"], record["job_id"], at)
        key = record.get("idempotency_key")
        if isinstance(key, str):
            entry = RedriveKey(
                record["job_id"], record["dead_letter_id"], str(record.get("fingerprint")), at.timestamp()
            )
            self.remember(record["by"], key, entry)

    def forget_redrive(self, record: dict) -> None:
        """Undo ``apply_redrive`` for a re-drive whose records Kafka did not take after all."""
        self.index.unmark(record["dead_letter_id"], record["job_id"])
        key = record.get("idempotency_key")
        if isinstance(key, str):
            with self._keys_lock:
                known = self._keys.get((record["by"], key))
                if known is not None and known.job_id == record["job_id"]:
                    del self._keys[(record["by"], key)]

    def remember(self, tenant: str, key: str, entry: RedriveKey) -> None:
        with self._keys_lock:
            self._keys[(tenant, key)] = entry
            self._keys.move_to_end((tenant, key))
            horizon = time.time() - self.config.key_ttl_s
            while self._keys and (
                len(self._keys) > self.config.max_keys or next(iter(self._keys.values())).created_at < horizon
            ):
                self._keys.popitem(last=False)

    def lookup(self, tenant: str, key: str) -> RedriveKey | None:
        """The re-drive ``tenant`` made with this ``Idempotency-Key`` (within the key's lifetime), if any."""
        with self._keys_lock:
            entry = self._keys.get((tenant, key))
        if entry is None or entry.created_at < time.time() - self.config.key_ttl_s:
            return None
        return entry

    @asynccontextmanager
    async def exclusive(self, tenant: str, key: str) -> AsyncIterator[None]:
        """One re-drive at a time per (tenant, key) in this process (across replicas, the job id that
        derives from the key makes racing re-drives name the same job)."""
        lock, users = self._inflight.get((tenant, key), (asyncio.Lock(), 0))
        self._inflight[(tenant, key)] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._inflight[(tenant, key)]
            if users == 1:
                del self._inflight[(tenant, key)]
            else:
                self._inflight[(tenant, key)] = (lock, users - 1)

    def sees_all(self, tenant: str, keys_enabled: bool) -> bool:
        """Operators (and everyone without API keys: loopback only) see every tenant's dead letters."""
        return not keys_enabled or tenant in self.config.operators

    def visible(self, entry: DeadLetter, tenant: str, keys_enabled: bool) -> bool:
        return entry.tenant == tenant or self.sees_all(tenant, keys_enabled)

    def page_for(
        self, tenant: str, keys_enabled: bool, limit: int, cursor: str | None, redriven: bool | None = None
    ) -> tuple[list[DeadLetter], str | None]:
        """A page of what ``tenant`` may see: every dead letter for operators, else its own."""
        if self.sees_all(tenant, keys_enabled):
            return self.index.page(limit, cursor, redriven=redriven)
        return self.index.page(limit, cursor, tenant, redriven=redriven)

    def record(self, entry: DeadLetter, timeout_s: float = 10.0) -> dict:
        """The entry's whole record from Kafka (blocking): ``original`` as bytes; RecordGone past retention."""
        return fetch(self._kafka, self.topic, entry.partition, entry.offset, timeout_s)


class RecordGone(JobstreamError):
    """The dead letter's record is no longer in Kafka (retention)."""


def fetch(kafka: KafkaConnection, topic: str, partition: int, offset: int, timeout_s: float = 10.0) -> dict:
    """The whole dead-letter record at ``partition``/``offset`` (``original`` as bytes), read by offset."""
    consumer = Consumer(kafka.consumer_config(topics.reader_group(topic), **{"enable.partition.eof": True}))
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() in (KafkaError._PARTITION_EOF, KafkaError.OFFSET_OUT_OF_RANGE):
                    raise RecordGone(f"{topic}[{partition}]@{offset}")
                raise JobstreamError(f"reading {topic}: {error}")
            if message.offset() != offset:  # the record was deleted: the next one came instead
                raise RecordGone(f"{topic}[{partition}]@{offset}")
            return fmt.load(message.value() or b"")
        raise TimeoutError(f"no answer from Kafka for {topic}[{partition}]@{offset} in {timeout_s:g}s")
    finally:
        consumer.close()
