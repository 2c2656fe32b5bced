"""Faust's Kafka consumer with a cheaper hand-over of each fetched record to the stream.

``_drain_messages`` is Faust's loop with two steps changed: a delivery is one task raced
against one interrupt task per fetch loop (flow suspended, stopped, crashed) instead of four
tasks per record (docs/benchmarks.md, "Processors"); and pauses asked for with ``pause_later``
take effect between two fetches, as Faust's ``getmany`` silently skips the rest of a fetch's
records of a partition paused while it hands them over (they would be lost until a rebalance).
It overrides a private method, so it is used only with the Faust version it was copied from
(``COPIED_FROM``); ``UPSTREAM_SHA256`` makes tests/test_processors_units.py fail when the upstream
source changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode import Service

logger = logging.getLogger(__name__)

COPIED_FROM = "0.15.3"
#: sha256 of ``inspect.getsource(faust.transport.consumer.Consumer._drain_messages)`` in COPIED_FROM.
UPSTREAM_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        """Faust's consumer, with our fetch wait instead of its fixed 1,500 ms (see ``Transport``)."""
        client = super()._create_worker_consumer(transport)
        wait_ms = getattr(transport, "fetch_wait_ms", None)
        if wait_ms is not None:
            client._fetch_max_wait_ms = wait_ms  # read when the client starts its fetcher
        return client

    async def _fetch_records(
        self, consumer: Any, active_partitions: Any, timeout: Any = None, max_records: Any = None
    ) -> Any:
        """Take the client's buffered partitions in turn: aiokafka fills a fetch's ``max_records`` in the
        order partitions were buffered, so one flooded partition, resumed again and again, would take every
        fetch and a quiet tenant's (or the priority lane's) records would wait behind it."""
        buffered = getattr(getattr(consumer, "_fetcher", None), "_records", None)
        if buffered:
            first = next(iter(buffered))
            buffered[first] = buffered.pop(first)  # the first goes last
        return await super()._fetch_records(consumer, active_partitions, timeout, max_records)


class Consumer(faust_aiokafka.Consumer):
    _pause_pending: set[Any] | None = None

    def on_buffer_full(self, tp: Any) -> None:
        """Keep handing over ``tp``: Faust would stop while the stream buffer is under pressure, and with every
        partition stopped its ``_wait_next_records`` sleeps a whole second (single submits of one tenant ran at
        half speed with a small buffer). A full buffer blocks the fetch loop by itself (its put waits), and
        the runner's read-ahead pauses what it holds too much of."""

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def pause_later(self, tps: set[Any]) -> None:
        """Pause ``tps`` once the records of the current fetch are handed over (see the module's docstring)."""
        if self._pause_pending is None:
            self._pause_pending = set()
        self._pause_pending |= tps

    def _apply_pauses(self) -> None:
        if self._pause_pending:
            self.pause_partitions(self._pause_pending & self.assignment())
            self._pause_pending.clear()

    def resume_partitions(self, tps: Any) -> None:
        """Resume, and wake a fetch waiting on the other partitions: the resumed ones' records are already
        in the client's buffer, and would otherwise wait for the fetch's timeout (1 s) or other records."""
        if self._pause_pending:
            self._pause_pending -= set(tps)
        super().resume_partitions(tps)
        thread = getattr(self, "_thread", None)
        fetcher = getattr(getattr(thread, "_consumer", None), "_fetcher", None)
        loop = getattr(thread, "thread_loop", None)
        if fetcher is not None and loop is not None:
            loop.call_soon_threadsafe(_wake, fetcher)

    async def _interrupted(self) -> None:
        """Returns once flow is suspended, or the consumer stopped or crashed (``wait_first`` adds those)."""
        await self.wait_first(self.suspend_flow.wait())

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover  (Faust 0.15.3, one step changed)
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set

        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        flag_consumer_fetching = CONSUMER_FETCHING
        set_flag = self.diag.set_flag
        unset_flag = self.diag.unset_flag
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for

        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        ensure_future = asyncio.ensure_future
        wait = asyncio.wait
        first_completed = asyncio.FIRST_COMPLETED
        interrupt: asyncio.Future[None] = ensure_future(self._interrupted())

        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(flag_consumer_fetching)
                ait = cast(AsyncIterator, getmany(timeout=1.0))

                # Sleeping because sometimes getmany is called in a loop
                # never releasing to the event loop
                await self.sleep(0)
                if not self.should_stop:
                    async for tp, message in ait:
                        num_since_yield += 1
                        if num_since_yield > yield_every:
                            await sleep(0)
                            num_since_yield = 0

                        offset = message.offset
                        r_offset = get_read_offset(tp)
                        if r_offset is None or offset >= r_offset:
                            gap = offset - (r_offset or 0)
                            # We have a gap in income messages
                            if gap > 1 and r_offset:
                                acks_enabled = acks_enabled_for(message.topic)
                                if acks_enabled:
                                    await self._add_gap(tp, r_offset + 1, offset)
                            if commit_every is not None:
                                if self._n_acked >= commit_every:
                                    self._n_acked = 0
                                    await self.commit()
                            # Faust: await self.wait_first(callback(message), self.suspend_flow.wait())
                            delivery = ensure_future(callback(message))
                            if interrupt.done():
                                interrupt.result()
                                interrupt = ensure_future(self._interrupted())
                            await wait((delivery, interrupt), return_when=first_completed)
                            if delivery.done():
                                delivery.result()  # propagate its exception, as wait_first does
                            else:
                                delivery.cancel()
                            set_read_offset(tp, offset)
                        else:
                            self.log.dev(
                                "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                                offset,
                                message.key,
                                message.value,
                            )
                    self._apply_pauses()  # not Faust's: pauses wait for the end of a fetch
                    unset_flag(flag_consumer_fetching)

        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                # we're already stopping so ignore
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            interrupt.cancel()
            unset_flag(flag_consumer_fetching)


def _wake(fetcher: Any) -> None:
    """On the consumer thread's loop: end aiokafka's waits for fetched records (they look again)."""
    for waiter in list(fetcher._fetch_waiters):
        if not waiter.done():
            waiter.set_result(None)


class Transport(faust_aiokafka.Transport):
    """``fetch_wait_ms``: how long a fetch may wait at the broker for partitions with nothing new.
    aiokafka sends one fetch at a time per broker, for the partitions with nothing buffered; while a
    fetch of idle partitions waits there, a busy partition whose buffered records ran out is not
    fetched again. Faust fixes that wait at 1,500 ms: with small fetches (a few hundred records of a
    partition buffered at a time) a worker then starved for up to 1.5 s per round."""

    Consumer = Consumer
    fetch_wait_ms: int | None = None


def install(app: faust.App, fetch_wait_ms: int | None = None) -> None:
    """Give ``app`` this consumer; call before anything touches ``app.transport`` (e.g. ``app.topic``)."""
    if faust.__version__ != COPIED_FROM:
        logger.warning("faust %s is not %s: using Faust's own fetch loop", faust.__version__, COPIED_FROM)
        return
    transport = Transport(app.conf.broker_consumer, app)
    transport.fetch_wait_ms = fetch_wait_ms
    app.transport = transport
