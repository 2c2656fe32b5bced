"""The notifier role: reads ``jobs.events`` and ``webhooks.retry`` in one consumer group, posts.

At least once, with nothing held only in memory: a record's offset is committed only after its
work is done — a subscription written to ``webhooks.subscriptions``, a delivery answered 2xx,
410 or refused, or handed to ``webhooks.retry`` as its next attempt (acked by Kafka). A restart
re-reads from the committed offsets, so a delivery may be posted again (its ``webhook-id`` is
the same): receivers drop repeats. Every attempt goes to ``webhooks.attempts`` (the sink stores
it in ClickHouse's ``webhook_deliveries``).

The consumer runs on its own thread and only decodes and filters; attempts run on the event loop,
each endpoint behind its own limits (``notifier.sender``), so a slow receiver delays nothing but
its own deliveries. The pipeline never waits for the notifier: it is just another consumer group.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from notifier.records import AttemptRecord, Delivery, Subscription, webhook_id
from notifier.sender import Result, Sender, SenderConfig, Verdict
from notifier.subscriptions import Subscriptions
from notifier.tenant_secrets import WebhookSecrets
from streams import topics
from streams.events import EventType
from streams.kafka_config import KafkaConnection
from streams.producer import AsyncProducer, Outgoing, ProduceError
from streams.reader import KafkaReader
from streams.settings import Settings
from streams.wire import decode_event, peek, webhook_in

logger = logging.getLogger(__name__)

_QUEUED = EventType.QUEUED
_Origin = tuple[str, int, int]  # topic, partition, offset
COMMIT_EVERY_S = 0.5


@dataclass(frozen=True)
class RetryPolicy:
    horizon_s: float  #: JOBSTREAM_WEBHOOK_RETRY_HORIZON_S
    backoff_s: float  #: JOBSTREAM_WEBHOOK_BACKOFF_S
    backoff_max_s: float  #: JOBSTREAM_WEBHOOK_BACKOFF_MAX_S
    max_in_flight: int  #: JOBSTREAM_WEBHOOK_MAX_IN_FLIGHT

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            settings.webhook_retry_horizon_s,
            settings.webhook_backoff_s,
            settings.webhook_backoff_max_s,
            settings.webhook_max_in_flight,
        )

    def delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter in its upper half: ``attempt`` is the one that just failed."""
        base = min(self.backoff_max_s, self.backoff_s * 2 ** min(attempt - 1, 40))
        return base * random.uniform(0.5, 1.0)


class Offsets:
    """Per partition: the offsets whose work is not done yet, and the next offset to read.

    What may be committed is the lowest offset still open, else the next one to read. Filled by
    the consumer thread, emptied by the event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[tuple[str, int], set[int]] = {}
        self._next: dict[tuple[str, int], int] = {}
        self._committed: dict[tuple[str, int], int] = {}

    def seen(self, topic: str, partition: int, offset: int, *, open_: bool) -> None:
        with self._lock:
            key = (topic, partition)
            self._next[key] = max(self._next.get(key, 0), offset + 1)
            if open_:
                self._open.setdefault(key, set()).add(offset)

    def done(self, origin: _Origin) -> None:
        with self._lock:
            pending = self._open.get(origin[:2])
            if pending is not None:
                pending.discard(origin[2])

    def forget(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            for tp in partitions:
                key = (tp.topic, tp.partition)
                self._open.pop(key, None)
                self._next.pop(key, None)
                self._committed.pop(key, None)

    def to_commit(self) -> list[TopicPartition]:
        """Positions that moved since the last call."""
        with self._lock:
            found = []
            for key, nxt in self._next.items():
                pending = self._open.get(key)
                position = min(pending) if pending else nxt
                if self._committed.get(key) != position:
                    self._committed[key] = position
                    found.append(TopicPartition(key[0], key[1], position))
            return found


class _Reader(KafkaReader):
    """The notifier's consumer: decodes and filters on its thread, hands deliveries to the loop."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, notifier: Notifier) -> None:
        super().__init__(
            kafka,
            settings.topic(topics.EVENTS),
            group_id=settings.topic(topics.NOTIFIER_GROUP),
            name="notifier",
            **{"session.timeout.ms": int(settings.webhook_session_timeout_s * 1000), **settings.bulk_reader_fetch()},
        )
        self._topics = [settings.topic(topics.EVENTS), settings.topic(topics.WEBHOOK_RETRIES)]
        self._retries = settings.topic(topics.WEBHOOK_RETRIES)
        self._notifier = notifier
        self._offsets = notifier.offsets
        self._last_commit = 0.0

    def attach(self) -> None:
        def revoked(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self._commit()
            self._offsets.forget(partitions)

        self.consumer.subscribe(self._topics, on_revoke=revoked, on_lost=revoked)

    def round(self) -> None:
        super().round()
        if time.monotonic() - self._last_commit >= COMMIT_EVERY_S:
            self._commit()

    def finish(self) -> None:
        self._commit()

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        positions = self._offsets.to_commit()
        if positions:
            try:
                self.consumer.commit(offsets=positions, asynchronous=False)
            except Exception as exc:  # a rebalance in progress: the next round commits again
                logger.info("notifier commit failed (%s); retrying next round", exc)

    def handle(self, messages: list[Message]) -> None:
        work: list[tuple[str, Any, _Origin]] = []
        subscriptions = self._notifier.subscriptions
        for message in messages:
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            item = None
            try:
                if topic == self._retries:
                    item = ("retry", Delivery.from_bytes(message.value()))
                else:
                    item = self._from_event(message.value(), subscriptions, message.headers)
            except Exception:  # one bad record must not stop the notifier
                logger.exception("notifier: skipping the record at %s[%d]@%d", topic, partition, offset)
            self._offsets.seen(topic, partition, offset, open_=item is not None)
            if item is not None:
                work.append((item[0], item[1], (topic, partition, offset)))
        if work:
            self._notifier.reserve(len(work))
            self.to_loop(self._notifier.accept, work)
        while self._notifier.full() and not self.stopping:
            self._notifier.room.wait(0.2)

    @staticmethod
    def _from_event(
        raw: bytes, subscriptions: Subscriptions, headers: Callable[[], Any] | None = None
    ) -> tuple[str, Any] | None:
        """What to do for one event. ``headers``: the record's, asked for only when the job is not
        known: a worker's event may come before its job's queued event, and carries the webhook."""
        head = peek(raw)
        if head is not None:  # most events are of jobs without a webhook: skipped without a parse
            type_, job_id, tenant = head
            if type_ == "queued" and b'"webhook"' not in raw:
                return None  # no webhook ("webhook" as a key inside params only costs the parse below)
            if (
                type_ != "queued"
                and subscriptions.get(job_id) is None
                and not _learn(job_id, tenant, headers, subscriptions)
            ):
                return None
        event = decode_event(raw)
        if event.type is _QUEUED:
            subscription = Subscription.from_queued(event.tenant, event.data)
            if subscription is None:
                return None
            return "subscribe", subscriptions.add(event.job_id, subscription)
        if head is None and subscriptions.get(event.job_id) is None:
            _learn(event.job_id, event.tenant, headers, subscriptions)
        subscription = subscriptions.get(event.job_id)
        if subscription is None or event.type.value not in subscription.events or subscription.tenant != event.tenant:
            return None
        now = time.time()
        return "deliver", Delivery(
            webhook_id(event.job_id, event.type.value, event.seq),
            event.job_id,
            event.tenant,
            event.type.value,
            event.seq,
            subscription.url,
            event.raw,
            1,
            now,
            now,
        )


def _learn(job_id: str, tenant: str, headers: Callable[[], Any] | None, subscriptions: Subscriptions) -> bool:
    """Subscribe a job from the webhook header of its event (in memory: its queued event, later on
    the same partition, makes it durable as usual); False when the event has none."""
    found = webhook_in(headers()) if headers is not None else None
    subscription = Subscription.from_queued(tenant, found) if found is not None else None
    if subscription is None:
        return False
    subscriptions.add(job_id, subscription)
    return True


class Notifier:
    """The notifier role in one process: start() on an event loop, stop() from anywhere."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, secrets: WebhookSecrets) -> None:
        self._kafka = kafka
        self._settings = settings
        self.secrets = secrets
        self.subscriptions = Subscriptions(kafka, settings)
        self.offsets = Offsets()
        self.policy = RetryPolicy.from_settings(settings)
        self._retry_topic = settings.topic(topics.WEBHOOK_RETRIES)
        self._attempts_topic = settings.topic(topics.WEBHOOK_ATTEMPTS)
        self._sender_config = SenderConfig.from_settings(settings)
        self._in_flight = 0
        self._count_lock = threading.Lock()
        self.room = threading.Event()
        self._gone: set[str] = set()  # jobs whose receiver answered 410 (this process)
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._reader: _Reader | None = None
        self._producer: AsyncProducer | None = None
        self._sender: Sender | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- life ------------------------------------------------------------------------------
    async def start(self) -> Notifier:
        """Load the tenants' secret generations and the subscriptions, then start consuming."""
        self._loop = asyncio.get_running_loop()
        self._producer = AsyncProducer(self._kafka, self._settings.produce_timeout_s)
        self._sender = Sender(self._sender_config)
        self.subscriptions.start()
        if not self.secrets.running and not self.secrets.loaded.is_set():
            self.secrets.start()
        for mirror in (self.subscriptions, self.secrets):
            if not await mirror.wait_loaded(120):
                raise RuntimeError(f"could not read {mirror.topic} from Kafka in 120 s")
        self._reader = _Reader(self._kafka, self._settings, self)
        self._reader.start()
        logger.info("notifier started")
        return self

    async def aclose(self) -> None:
        """Stop reading, cancel what is in flight (its offsets stay uncommitted: re-read on restart)."""
        if self._reader is not None:
            await asyncio.to_thread(self._reader.stop)
        for timer in self._timers:
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.to_thread(self.subscriptions.stop)
        if self._sender is not None:
            await self._sender.close()
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close)

    # --- backpressure ----------------------------------------------------------------------
    def reserve(self, count: int) -> None:
        with self._count_lock:
            self._in_flight += count
            if self._in_flight >= self.policy.max_in_flight:
                self.room.clear()

    def _release(self) -> None:
        with self._count_lock:
            self._in_flight -= 1
            if self._in_flight < self.policy.max_in_flight:
                self.room.set()

    def full(self) -> bool:
        return self._in_flight >= self.policy.max_in_flight

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # --- on the loop -------------------------------------------------------------------------
    def accept(self, work: list[tuple[str, Any, _Origin]]) -> None:
        for kind, payload, origin in work:
            if kind == "subscribe":
                self._spawn(self._persist(payload), origin)
            elif kind == "deliver" or payload.due_at <= time.time():
                self._spawn(self._deliver(payload), origin)
            else:
                self._schedule(payload, origin)

    def _schedule(self, delivery: Delivery, origin: _Origin) -> None:
        """A retry not due yet waits in memory (its offset stays open until it is done)."""
        loop = asyncio.get_running_loop()
        holder: list[asyncio.TimerHandle] = []

        def due() -> None:
            self._timers.discard(holder[0])
            self._spawn(self._deliver(delivery), origin)

        holder.append(loop.call_later(delivery.due_at - time.time(), due))
        self._timers.add(holder[0])

    def _spawn(self, work: Any, origin: _Origin) -> None:
        task = asyncio.ensure_future(self._finish(work, origin))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish(self, work: Any, origin: _Origin) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:  # not marked done: the record is read again after a restart
            logger.exception("notifier: the work of %s[%d]@%d failed; left for a restart", *origin)
            self._release()
            return
        self.offsets.done(origin)
        self._release()

    async def _persist(self, record: Outgoing) -> None:
        await self._send([record])

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._sender is not None
        if delivery.job_id in self._gone:
            return
        if delivery.due_at - delivery.first_at > self.policy.horizon_s + self.policy.backoff_max_s:
            return  # a record past any horizon (e.g. read again long after): nothing left to do
        attempted_at = time.time()
        result = await self._sender.attempt(delivery, self.secrets.signing(delivery.tenant))
        if result.verdict is Verdict.DEFERRED:
            retry_at = (result.retry_at or attempted_at) + random.uniform(0, self.policy.backoff_s)
            await self._send(
                [Outgoing(self._retry_topic, delivery.job_id.encode(), delivery.later(retry_at, False).to_bytes())]
            )
            return
        outgoing = []
        verdict: Verdict | None = result.verdict
        if verdict is Verdict.RETRY:
            retry_at = time.time() + self.policy.delay(delivery.attempt)
            if retry_at - delivery.first_at <= self.policy.horizon_s:
                outgoing.append(
                    Outgoing(self._retry_topic, delivery.job_id.encode(), delivery.later(retry_at).to_bytes())
                )
            else:
                verdict = None  # recorded as failed
        outcome = "failed" if verdict is None else verdict.value
        record = _attempt(delivery, attempted_at, result, outcome)
        outgoing.insert(0, Outgoing(self._attempts_topic, delivery.job_id.encode(), record.to_bytes()))
        await self._send(outgoing)
        if result.verdict is Verdict.GONE:
            self._gone.add(delivery.job_id)
        if outcome == "failed":
            logger.warning(
                "webhook delivery failed for good after %d attempts",
                delivery.attempt,
                extra={"job_id": delivery.job_id, "tenant": delivery.tenant, "event": delivery.event},
            )

    async def _send(self, records: list[Outgoing]) -> None:
        """Produce until Kafka acknowledges (a broker outage only delays the notifier)."""
        assert self._producer is not None
        pause = 0.5
        while True:
            try:
                await self._producer.send_many(records)
                return
            except ProduceError as exc:
                logger.warning("notifier: Kafka did not acknowledge (%s); retrying in %.1fs", exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)


def _attempt(delivery: Delivery, attempted_at: float, result: Result, outcome: str) -> AttemptRecord:
    return AttemptRecord(
        delivery, attempted_at, result.status_code, result.duration_ms, outcome, result.error, result.response
    )
