"""The background Kafka reader: one consumer, read in chunks on its own thread until stopped.

Every long-lived consumer in jobstream is this loop (topic mirrors, the workers' control tail,
the API's lag monitor, the SSE gateway's tail, the sink), so starting,
stopping, assignment, error handling, "caught up" and the hop to an event loop live here once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from tenacity import Retrying, stop_after_delay, wait_exponential

from streams.kafka_config import KafkaConnection

logger = logging.getLogger(__name__)

# Broker answers worth waiting out (librdkafka does not always flag them retriable).
_TRANSIENT = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
        KafkaError._ALL_BROKERS_DOWN,
    }
)


def transient(exc: BaseException) -> bool:
    """A Kafka error that goes away by waiting (coordinator moving or loading, timeouts)."""
    if not isinstance(exc, KafkaException):
        return False
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)


def partitions_of(consumer: Consumer, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The topic's partition numbers, sorted (none for a topic that does not exist)."""
    return sorted(consumer.list_topics(topic, timeout=timeout_s).topics[topic].partitions)


def watermarks(
    consumer: Consumer, topic: str, partitions: list[int], timeout_s: float = 10.0, retry_for_s: float = 0.0
) -> dict[int, tuple[int, int]]:
    """``(low, high)`` per partition, asked of the broker now; ``high`` is where the next record lands.

    ``retry_for_s``: keep asking that long (a just-created topic may not have leaders yet).
    """
    for attempt in Retrying(
        stop=stop_after_delay(retry_for_s), wait=wait_exponential(multiplier=0.1, max=2), reraise=True
    ):
        with attempt:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s, cached=False)
                for p in partitions
            }
    raise AssertionError("unreachable")  # tenacity either returned or re-raised


class KafkaReader:
    """A consumer of one topic, read on a daemon thread from ``start()`` to ``stop()``.

    A subclass writes only what its records mean:

    - ``handle_message(message)`` per record, on the reader's thread. A record whose handling
      raises is logged and skipped: one bad record never stops a reader. Or ``handle(messages)``
      for a whole chunk (decode all, then one hop to the loop with ``to_loop``).
    - ``start_offset(partition, low, high)``: where each partition is read from (the beginning).
    - ``attach()``: to place the consumer differently, e.g. ``subscribe`` to a group.
    - ``round()``: to own the whole read-and-handle step; ``round_failed(exc)``: what a failed
      round means; ``finish()``: last words on the thread before the consumer closes (e.g. write
      the batch in hand).

    ``loaded`` is set once every record that was in the assigned partitions when the reader
    attached has been handled (at once when there were none; never for a subscription), so a
    service can stay unready until it knows the stored state. A round that raises is logged and
    tried again after ``error_pause_s`` (``round_failed``); consumer errors other than partition
    EOF go to ``on_error`` (logged). ``to_loop`` hands work to the event loop ``start()`` was called on.

    Two readers that own more of the loop: the SSE gateway's ``KafkaTail`` (``attach`` asks
    offsets-for-times of the recent window; ``handle`` hands each chunk to the loop with
    ``to_loop(..., wait=True)``) and the ``Sink`` (``attach`` subscribes to its group; ``round``,
    ``round_failed`` and ``finish`` are its batch, rewind and last-flush steps).
    """

    chunk_size: int = 1000  #: records taken from the consumer at once
    poll_s: float = 0.2  #: longest wait for a record: how soon ``stop()`` is noticed
    error_pause_s: float = 1.0  #: wait after a failed round before the next
    attach_on_thread: bool = False  #: True: attach on the reader's thread (retried), so ``start()`` never blocks

    def __init__(self, kafka: KafkaConnection, topic: str, *, group_id: str, name: str, **config: Any) -> None:
        """``group_id``: needed by the client even when the reader never joins the group or commits
        (then it only names whose committed offsets ``committed()`` reads). ``config``: librdkafka
        settings over ``kafka.consumer_config``'s."""
        self.topic = topic
        self.name = name
        self.consumer = Consumer(kafka.consumer_config(group_id, **config))
        self.loaded = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._behind: dict[int, int] | None = None  # partition -> the end offset ``loaded`` waits for
        self._closed = False

    # --- life ------------------------------------------------------------------------------
    def start(self) -> Self:
        """Attach (unless ``attach_on_thread``) and start reading; remembers the running event loop, if any."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if not self.attach_on_thread:
            try:
                self.attach()
            except BaseException:
                self._close()
                raise
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop reading (from any thread) and close the consumer; ``finish()`` runs first, on the reader's thread."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            self._close()
            return
        self._thread.join(timeout=timeout_s)
        if self._thread.is_alive():
            logger.warning("%s did not stop within %.0fs", self.name, timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def wait_loaded(self, timeout_s: float) -> bool:
        """From the event loop: True once ``loaded``, False if ``timeout_s`` passed first."""
        return await asyncio.to_thread(self.loaded.wait, timeout_s)

    # --- what subclasses may override -------------------------------------------------------
    def attach(self) -> None:
        """Assign every partition at ``start_offset`` and note the end offsets ``loaded`` waits for."""
        partitions = partitions_of(self.consumer, self.topic)
        marks = watermarks(self.consumer, self.topic, partitions, retry_for_s=60)
        assignment = []
        self._behind = {}
        for p, (low, high) in marks.items():
            offset = self.start_offset(p, low, high)
            assignment.append(TopicPartition(self.topic, p, offset))
            if high > (low if offset < 0 else max(offset, low)):  # records to read before we are caught up
                self._behind[p] = high
        self.consumer.assign(assignment)
        if not self._behind:
            self._loaded()

    def start_offset(self, partition: int, low: int, high: int) -> int:
        """Where ``partition`` is read from; ``low``/``high``: its watermarks at start."""
        return OFFSET_BEGINNING

    def round(self) -> None:
        """One step of the loop: read a chunk, hand its records over, note how far we got."""
        messages = self.read()
        if not messages:
            return
        good: list[Message] = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                self._reached(message.partition(), None)
            else:
                self.on_error(error)
        if good:
            self.handle(good)
            if self._behind:
                for message in good:
                    self._reached(message.partition(), message.offset() + 1)
        if self._behind == {} and not self.loaded.is_set():
            self._loaded()

    def read(self) -> list[Message]:
        """Up to ``chunk_size`` records: what is there now, else the first to come within ``poll_s`` and
        what came with it (``consume(n, t)`` waits for n records or t, so latency is not the timeout)."""
        messages = self.consumer.consume(self.chunk_size, timeout=0)
        if not messages:
            messages = self.consumer.consume(1, timeout=self.poll_s)
            if messages:
                messages += self.consumer.consume(self.chunk_size - 1, timeout=0)
        return messages

    def handle(self, messages: list[Message]) -> None:
        """A chunk of records (errors already taken out), each to ``handle_message``, a bad one skipped."""
        for message in messages:
            try:
                self.handle_message(message)
            except Exception:  # one bad record must not stop the reader
                logger.exception(
                    "%s: could not handle the record at %s[%d]@%d",
                    self.name,
                    message.topic(),
                    message.partition(),
                    message.offset(),
                )

    def handle_message(self, message: Message) -> None:
        raise NotImplementedError

    def on_error(self, error: KafkaError) -> None:
        """A consumer error (not a partition EOF): logged; the consumer recovers by itself from most."""
        logger.warning("%s consumer error: %s", self.name, error)

    def on_loaded(self) -> None:
        """Called once, on the reader's thread (or in ``start()``), when ``loaded`` is set."""
        logger.info("%s read %s to its end", self.name, self.topic)

    def round_failed(self, exc: Exception) -> None:
        """A round raised: logged, then a pause of ``error_pause_s`` (or until stopped) before the next."""
        logger.error("%s: a round failed; going on in %.1fs", self.name, self.error_pause_s, exc_info=exc)
        self._stop.wait(self.error_pause_s)

    def finish(self) -> None:
        """Last words on the reader's thread after the loop ended, before the consumer closes."""

    # --- the event loop ---------------------------------------------------------------------
    def to_loop(self, callback: Callable[..., object], *args: Any, wait: bool = False) -> bool:
        """Run ``callback(*args)`` on the loop ``start()`` was called on; ``wait``: until it has run.

        False when the loop is closed, or (``wait``) the reader stops first: the work was not, or
        may not have been, done. Waiting is the backpressure of a reader that feeds a busy loop.
        """
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self.name}: start() was not called on an event loop")
        if not wait:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop is closed: shutting down
                return False
            return True
        done = threading.Event()

        def run() -> None:
            try:
                callback(*args)
            finally:
                done.set()

        try:
            loop.call_soon_threadsafe(run)
        except RuntimeError:
            return False
        while not done.wait(0.5):
            if self._stop.is_set() or loop.is_closed():
                return False
        return True

    # --- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self.attach_on_thread:
                while not self._attached_on_thread():
                    if self._stop.wait(self.error_pause_s):
                        return
            while not self._stop.is_set():
                try:
                    self.round()
                except Exception as exc:  # never let the thread die silently
                    self.round_failed(exc)
            self.finish()
        except Exception:
            logger.exception("%s stopped", self.name)
        finally:
            self._close()

    def _attached_on_thread(self) -> bool:
        try:
            self.attach()
            return True
        except Exception:
            logger.warning("%s could not attach to %s; trying again", self.name, self.topic, exc_info=True)
            return False

    def _reached(self, partition: int, position: int | None) -> None:
        """``partition`` was read up to ``position`` (None: to its current end)."""
        behind = self._behind
        if behind:
            end = behind.get(partition)
            if end is not None and (position is None or position >= end):
                del behind[partition]

    def _loaded(self) -> None:
        if not self.loaded.is_set():
            self.loaded.set()
            self.on_loaded()

    def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self.consumer.close()
