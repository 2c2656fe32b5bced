"""Result reuse: a request identical to an earlier one is answered by that job.

"Identical" is the reuse key: tenant, kind, the calculation's version, and the **canonical
params** — the params as the calculation's model validated them (defaults filled in, a JSON
integer in a float field read as that float), written as JSON with sorted keys. So key order,
omitted defaults and ``1`` vs ``1.0`` (in a float field) do not matter; ``-0.0`` and ``0.0`` do
(results can differ: the min of ``[-0.0]`` is ``-0.0``), and strings are compared as given
(no Unicode normalisation: NFC and NFD spellings are different requests).

Only jobs submitted with ``reuse`` enter the index (a plain submit costs nothing extra). An
entry goes to the compacted topic ``jobs.reuse`` in the same flush as its job, and every API
process reads the topic back at start-up and tails it (``/healthz`` waits for it), so the index
survives restarts and is shared by replicas. What became of a job comes from the job view
(ClickHouse plus this process's recent events); a succeeded view is final, so it is kept with
the entry and later hits need no query. Memory is bounded: at most
``JOBSTREAM_REUSE_MAX_ENTRIES`` entries, the oldest dropped first, none older than
``JOBSTREAM_REUSE_MAX_AGE_S``.

Single flight (per API process): one request at a time submits the job for a key; identical
requests wait for it and then join its job. When its submit ends in a 503 "outcome unknown" the
job may still land, so the key stays *pending* until the delivery reports are in: identical
requests wait for them (up to ``JOBSTREAM_PRODUCE_TIMEOUT_S``) and join the job if its request
landed, start a new one only if it surely did not, and answer 503 "outcome unknown" naming that
job if the reports are still out.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from streams import topics
from streams.errors import JobstreamError
from streams.events import JobReused, JobStatus, JobView, ReuseHow, new_job_id
from streams.kafka_config import KafkaConnection
from streams.mirror import TopicMirror
from streams.producer import Outcome, Outgoing
from streams.settings import Settings
from streams.wire import encode_reused

logger = logging.getLogger(__name__)


class ReuseRequest(BaseModel):
    """``"reuse": {"max_age_s": N}`` on a submission: answer with an identical earlier job when one
    succeeded within N seconds (200, its result), or join one that is queued or running (202)."""

    model_config = ConfigDict(extra="forbid")

    # strict: a JSON number (true and "60" are not an age); the upper bound is a setting, checked by the route
    max_age_s: float = Field(
        ge=0,
        allow_inf_nan=False,
        strict=True,
        description="Oldest result (seconds since it finished) worth reusing; 0: only join a running job. "
        "At most JOBSTREAM_REUSE_MAX_AGE_S.",
    )


def canonical_params(params: BaseModel) -> bytes:
    """The validated params as sorted-key JSON: what 'the same params' means for reuse."""
    return orjson.dumps(params.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)


def reuse_key(tenant: str, kind: str, version: str, params: BaseModel) -> bytes:
    """The index key of a request: tenant, kind, version and a SHA-256 of the canonical params."""
    digest = hashlib.sha256(canonical_params(params)).hexdigest()
    return f"{tenant}\x00{kind}\x00{version}\x00{digest}".encode()


@dataclass(frozen=True)
class ReuseConfig:
    """The reuse index's part of the settings."""

    topic: str  #: the compacted topic the index lives in
    answers_topic: str  #: where each reuse answer is recorded for analytics (jobs.reuses)
    max_age_s: float  #: JOBSTREAM_REUSE_MAX_AGE_S: the largest max_age_s, and how long an entry is kept
    max_entries: int  #: JOBSTREAM_REUSE_MAX_ENTRIES: most entries held in memory (the oldest go first)

    @classmethod
    def from_settings(cls, settings: Settings) -> ReuseConfig:
        return cls(
            settings.topic(topics.REUSE),
            settings.topic(topics.REUSES),
            settings.reuse_max_age_s,
            settings.reuse_max_entries,
        )


@dataclass
class _Entry:
    job_id: str
    version: str
    submitted_at: float  # unix seconds
    succeeded: JobView | None = None  # final once seen: later hits need no query


@dataclass(frozen=True)
class Claim:
    """A new job for a reuse key: its index record (published with the job) and the entry to remember."""

    key: bytes
    record: Outgoing
    entry: _Entry


@dataclass(frozen=True)
class _Pending:
    """A claim whose submit was not acknowledged in time; ``request_at``: where its request record is
    among the records of that send (the job exists once that one landed)."""

    claim: Claim
    outcome: asyncio.Future[Outcome]
    request_at: int


class StillUnknown(JobstreamError):
    """The job an identical request submitted for this key may still land: its outcome is not known yet."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the outcome of job {job_id} is not known yet")
        self.job_id = job_id


@dataclass(frozen=True)
class Found:
    """An earlier job that answers a request: ``hit`` (succeeded; ``view`` has the result) or a join."""

    job_id: str
    hit: bool
    view: JobView | None  # None for a join whose job the view does not know yet (sink lag, other replica)

    @property
    def status(self) -> JobStatus:
        return self.view.status if self.view is not None else JobStatus.QUEUED


ViewLoader = Callable[[str], Awaitable[JobView | None]]


class ReuseIndex(TopicMirror):
    """Reuse key → the latest job submitted with ``reuse`` for it; a mirror of ``jobs.reuse``."""

    def __init__(self, kafka: KafkaConnection, config: ReuseConfig) -> None:
        super().__init__(kafka, config.topic)
        self.answers_topic = config.answers_topic
        self._max_age_s = config.max_age_s
        self._max = config.max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._submitting: dict[bytes, asyncio.Future[None]] = {}
        self._pending: dict[bytes, _Pending] = {}

    # --- the mirror (its own thread) -------------------------------------------------------------
    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is not None and value is not None:
            data = orjson.loads(value)
            self._put(key, _Entry(data["job_id"], data["version"], data["submitted_at"]))

    def _put(self, key: bytes, entry: _Entry) -> None:
        with self._lock:
            known = self._entries.get(key)
            if known is not None and known.job_id == entry.job_id:
                return  # our own record read back: keep what we learnt of it
            self._entries[key] = entry
            self._entries.move_to_end(key)
            horizon = time.time() - self._max_age_s
            while self._entries and (
                len(self._entries) > self._max or next(iter(self._entries.values())).submitted_at < horizon
            ):
                self._entries.popitem(last=False)

    # --- the API (event loop) --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    async def find(self, key: bytes, max_age_s: float, load_view: ViewLoader) -> Found | None:
        """The earlier job that answers this request, or None (then a new job runs)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        now = time.time()
        view = entry.succeeded or await load_view(entry.job_id)
        if view is None:  # accepted, not visible here yet: join it while it is young enough to be in flight
            return Found(entry.job_id, False, None) if now - entry.submitted_at <= max_age_s else None
        if view.status is JobStatus.SUCCEEDED:
            if view.calc_version not in (None, entry.version):
                return None  # ran at another version than the request asks for
            entry.succeeded = view
            finished = view.finished_at.timestamp() if view.finished_at is not None else now
            return Found(entry.job_id, True, view) if now - finished <= max_age_s else None
        if view.status.terminal:  # failed or cancelled: never reused
            return None
        return Found(entry.job_id, False, view)

    def claim(self, key: bytes, job_id: str, version: str) -> Claim:
        """The index record to publish with a new job, and the entry to remember once it is acked."""
        entry = _Entry(job_id, version, time.time())
        value = orjson.dumps({"job_id": job_id, "version": version, "submitted_at": entry.submitted_at})
        return Claim(key, Outgoing(self.topic, key, value), entry)

    def remember(self, claim: Claim) -> None:
        self._put(claim.key, claim.entry)

    def track(self, claim: Claim, outcome: asyncio.Future[Outcome], request_at: int) -> None:
        """The claim's submit was not acknowledged in time (503 "outcome unknown"): hold its key as
        pending until ``outcome`` says whether the job's request (record ``request_at`` of that send)
        landed; if it did, remember the claim as after a 202."""
        pending = _Pending(claim, outcome, request_at)
        self._pending[claim.key] = pending
        outcome.add_done_callback(lambda _: self._settle(pending))

    def _settle(self, pending: _Pending) -> None:
        """Once the reports are in (idempotent): forget the pending key, remember the job if it exists."""
        key = pending.claim.key
        if self._pending.get(key) is not pending:
            return
        del self._pending[key]
        delivered = [] if pending.outcome.cancelled() else pending.outcome.result().delivered
        if pending.request_at < len(delivered) and delivered[pending.request_at] is not None:
            self.remember(pending.claim)
        else:
            logger.warning(
                "a reuse job whose outcome was unknown was not written; the next identical request submits it",
                extra={"job_id": pending.claim.entry.job_id},
            )

    def answer_record(self, tenant: str, found: Found, kind: str) -> Outgoing:
        """The analytics record of one request answered by ``found`` (no job, no result row)."""
        record = JobReused(
            answer_id=new_job_id(),
            tenant=tenant,
            kind=kind,
            job_id=found.job_id,
            how=ReuseHow.HIT if found.hit else ReuseHow.JOIN,
        )
        return Outgoing(self.answers_topic, found.job_id.encode(), encode_reused(record))

    async def single_flight(self, key: bytes, unknown_wait_s: float) -> _Flight:
        """Wait while another request of this process is submitting a job for ``key``, and while such a
        job's outcome is unknown (at most ``unknown_wait_s`` each time: ``StillUnknown`` past it); then own
        the key. Callers look the key up again after this: the job the other request made may answer them."""
        while True:
            if (flight := self._submitting.get(key)) is not None:
                await asyncio.shield(flight)
            elif (pending := self._pending.get(key)) is not None:
                if not pending.outcome.done():
                    await asyncio.wait([pending.outcome], timeout=unknown_wait_s)  # never cancels the outcome
                    if not pending.outcome.done():
                        raise StillUnknown(pending.claim.entry.job_id)
                self._settle(pending)
            else:
                return _Flight(self._submitting, key)


class _Flight:
    """Held while one request submits the job for a key; ``with`` releases it."""

    def __init__(self, submitting: dict[bytes, asyncio.Future[None]], key: bytes) -> None:
        self._submitting = submitting
        self._key = key
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        submitting[key] = self._done

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        self._submitting.pop(self._key, None)
        self._done.set_result(None)
