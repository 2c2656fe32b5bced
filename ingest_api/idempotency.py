"""Idempotency keys that survive restarts: a compacted Kafka topic, mirrored in memory.

``POST /v1/jobs`` with ``Idempotency-Key`` writes a key record to
``jobs.idempotency`` in the same flush as the job, so the key is durable exactly
when the job is. Every API process reads that topic from the beginning at
start-up (``/healthz`` is 503 until it has) and keeps tailing it, so a retry
that lands on another replica or after a restart finds the key. The job id is
derived from (tenant, key), so even two replicas racing on the same key name the
same job. Keys are kept ``JOBSTREAM_IDEMPOTENCY_TTL_S`` (topic retention and the
in-memory map alike).
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
from streams.mirror import TopicMirror
from streams.producer import Outgoing
from streams.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyEntry:
    job_id: str
    fingerprint: str
    created_at: float  # unix seconds


def _record_key(tenant: str, key: str) -> bytes:
    return f"{tenant}\x00{key}".encode()


class IdempotencyKeys(TopicMirror):
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        super().__init__(bootstrap, settings, settings.topic(topics.IDEMPOTENCY))
        self._ttl_s = settings.idempotency_ttl_s
        self._max = settings.idempotency_max_keys
        self._entries: OrderedDict[bytes, KeyEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[bytes, asyncio.Future[None]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value is not None:
            data = orjson.loads(value)
            self._put(key, KeyEntry(data["job_id"], data["fingerprint"], data["created_at"]))

    def _put(self, record_key: bytes, entry: KeyEntry) -> None:
        with self._lock:
            self._entries[record_key] = entry
            self._entries.move_to_end(record_key)
            horizon = time.time() - self._ttl_s
            while self._entries and (len(self._entries) > self._max
                                     or next(iter(self._entries.values())).created_at < horizon):
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

    async def exclusive(self, tenant: str, key: str) -> "_KeyGuard":
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
