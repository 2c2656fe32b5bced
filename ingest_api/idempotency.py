"""Idempotency keys that survive restarts: a compacted Kafka topic, mirrored in memory.

A key record goes to ``jobs.idempotency`` in the same flush as its job, so it is durable
exactly when the job is; every API process reads the topic at start-up (``/healthz`` is 503
until then) and keeps tailing it. The job id derives from (tenant, key), so racing replicas
name the same job. A key whose submit has an unknown outcome is *pending*: a retry waits for
the first attempt's delivery reports and never writes a second request record.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import orjson

from streams import topics
from streams.kafka_config import KafkaConnection
from streams.mirror import TopicMirror
from streams.producer import Outcome, Outgoing
from streams.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyEntry:
    job_id: str
    fingerprint: str
    created_at: float  # unix seconds


@dataclass(frozen=True)
class PendingKey:
    """A keyed submit whose outcome is not known yet: what it sent, and its delivery reports to come."""

    entry: KeyEntry
    outgoing: list[Outgoing]
    outcome: asyncio.Future[Outcome]


def _record_key(tenant: str, key: str) -> bytes:
    return f"{tenant}\x00{key}".encode()


@dataclass(frozen=True)
class KeyConfig:
    """The key store's part of the settings."""

    topic: str  #: the compacted topic the keys live in
    ttl_s: float  #: JOBSTREAM_IDEMPOTENCY_TTL_S: how long a key is honoured
    max_keys: int  #: JOBSTREAM_IDEMPOTENCY_MAX_KEYS: most keys held in memory (the oldest go first)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyConfig:
        return cls(settings.topic(topics.IDEMPOTENCY), settings.idempotency_ttl_s, settings.idempotency_max_keys)


class IdempotencyKeys(TopicMirror):
    def __init__(self, kafka: KafkaConnection, config: KeyConfig) -> None:
        super().__init__(kafka, config.topic)
        self._ttl_s = config.ttl_s
        self._max = config.max_keys
        self._entries: OrderedDict[bytes, KeyEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[bytes, asyncio.Future[None]] = {}
        self._pending: dict[bytes, PendingKey] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value is not None:
            data = orjson.loads(value)
            self._put(key, KeyEntry(data["job_id"], data["fingerprint"], data["created_at"]))

    def _put(self, record_key: bytes, entry: KeyEntry) -> None:
        with self._lock:
            self._entries[record_key] = entry
            self._entries.move_to_end(record_key)
            horizon = time.time() - self._ttl_s
            while self._entries and (
                len(self._entries) > self._max or next(iter(self._entries.values())).created_at < horizon
            ):
                self._entries.popitem(last=False)

    def lookup(self, tenant: str, key: str) -> KeyEntry | None:
        with self._lock:
            entry = self._entries.get(_record_key(tenant, key))
        if entry is None or entry.created_at < time.time() - self._ttl_s:
            return None
        return entry

    def record(self, tenant: str, key: str, job_id: str, fingerprint: str) -> tuple[Outgoing, KeyEntry]:
        """The record to publish with the job, and the entry to remember once it is acked."""
        entry = KeyEntry(job_id, fingerprint, time.time())
        value = orjson.dumps({"job_id": job_id, "fingerprint": fingerprint, "created_at": entry.created_at})
        return Outgoing(self.topic, _record_key(tenant, key), value), entry

    def remember(self, tenant: str, key: str, entry: KeyEntry) -> None:
        self._put(_record_key(tenant, key), entry)

    def pending(self, tenant: str, key: str) -> PendingKey | None:
        """The earlier attempt with this key whose outcome was unknown when it was answered, if any."""
        return self._pending.get(_record_key(tenant, key))

    def track(
        self, tenant: str, key: str, entry: KeyEntry, outgoing: list[Outgoing], outcome: asyncio.Future[Outcome]
    ) -> None:
        """Hold the key as pending until ``outcome`` says every record landed (then it is remembered);
        if some failed, it stays pending so that a retry re-sends exactly those."""
        record_key = _record_key(tenant, key)
        pending = PendingKey(entry, outgoing, outcome)
        self._pending[record_key] = pending

        def landed(done: asyncio.Future[Outcome]) -> None:
            if done.cancelled() or not done.result().ok:
                logger.warning(
                    "a timed-out submit failed for good; a retry with its key re-sends it",
                    extra={"job_id": entry.job_id, "tenant": tenant},
                )
                return
            self._put(record_key, entry)
            if self._pending.get(record_key) is pending:
                del self._pending[record_key]

        outcome.add_done_callback(landed)

    def settled(self, tenant: str, key: str) -> None:
        """Forget a pending attempt whose records were re-sent and acknowledged."""
        self._pending.pop(_record_key(tenant, key), None)

    async def exclusive(self, tenant: str, key: str) -> _KeyGuard:
        """Serialise concurrent requests with the same key in this process."""
        record_key = _record_key(tenant, key)
        while (pending := self._inflight.get(record_key)) is not None:
            await asyncio.shield(pending)
        return _KeyGuard(self._inflight, record_key)


class _KeyGuard:
    def __init__(self, inflight: dict[bytes, asyncio.Future[None]], record_key: bytes) -> None:
        self._inflight = inflight
        self._key = record_key
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inflight[record_key] = self._done

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self._inflight.pop(self._key, None)
        self._done.set_result(None)
