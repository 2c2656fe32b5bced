"""The Faust app: one agent reads ``jobs.requested`` and hands each request to the runner.

The fetch loop never waits for the runner: a partition whose held jobs reach
``JOBSTREAM_WORKER_PARTITION_READ_AHEAD`` is paused (and resumed at half), so one tenant's full
partitions stop being read while the other tenants' partitions and the priority lane flow.

Faust owns the consumer group (partitions, rebalances, offset commits); batching is ours
(``processors.batching``), so the agent iterates ``stream.noack()`` and the runner acks a
request only after its terminal event was acknowledged (at-least-once). On a rebalance Faust
clears our buffers too (``app.flow_control``): jobs not yet started are dropped unacked, for
the partition's next owner, and Faust waits only for running batches.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import uuid
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from calculations import registry
from processors import consumer
from processors.cancellation import ControlTail
from processors.dead_letters import DeadLetters, Source
from processors.outbox import Outbox, OutboxConfig
from processors.pool import CalcPool
from processors.runner import PartitionFlow, Runner, RunnerConfig
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.lifeline import watch_parent
from streams.producer import AsyncProducer
from streams.settings import Settings
from telemetry import metrics

logger = logging.getLogger(__name__)

APP_ID = topics.PROCESSORS_GROUP
CONTROL_CATCH_UP_S = 30.0


def plugin_modules(settings: Settings) -> list[str]:
    return [m.strip() for m in settings.plugins.split(",") if m.strip()]


class WorkerRuntime:
    """What a worker runs besides Faust: producer, calculation pool, runner, control tail.

    Started lazily by the agent (they need the running loop); ``clear`` is the
    hook ``app.flow_control`` calls when partitions are revoked.
    """

    def __init__(self, settings: Settings, kafka: KafkaConnection, flow: PartitionFlow | None = None) -> None:
        self.settings = settings
        self.kafka = kafka
        self.flow = flow
        self.runner: Runner | None = None
        self.pool: CalcPool | None = None
        self.control: ControlTail | None = None
        self._producer: AsyncProducer | None = None
        self._outbox: Outbox | None = None
        self._started: asyncio.Future[Runner] | None = None

    async def start(self) -> Runner:
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        return await asyncio.shield(self._started)

    async def _start(self) -> Runner:
        settings = self.settings
        # a worker whose values no scrape can see (no port, no multiprocess directory) records none
        metrics.configure(
            settings.metrics_tenant_label,
            settings.metrics_max_tenants,
            recording=settings.metrics and metrics.readable_here(settings.worker_metrics_port),
        )
        self._producer = AsyncProducer(
            self.kafka, settings.produce_timeout_s, poll_on_loop=False
        )  # sends are mostly chunks
        self._outbox = outbox = Outbox(self._producer, OutboxConfig.from_settings(settings)).start()
        dead_letters = DeadLetters(self._producer, settings.topic(topics.DEAD_LETTERS))
        self.pool = CalcPool(
            settings.calc_processes,
            plugins=plugin_modules(settings),
            grace_s=settings.timeout_grace_s,
            on_progress=self._on_progress,
        )
        await self.pool.start()
        self.runner = Runner(RunnerConfig.from_settings(settings), self.pool, outbox, dead_letters, self.flow).start()
        self.control = ControlTail(
            self.kafka,
            settings.topic(topics.CONTROL),
            settings.topic(f"jobstream-control-{uuid.uuid4().hex}"),  # never joins: one per worker
            self.runner.on_cancel,
        ).start()
        if not await self.control.wait_loaded(CONTROL_CATCH_UP_S):
            logger.warning("jobs.control not read to its end within %.0fs; starting anyway", CONTROL_CATCH_UP_S)
        # Start-up objects (Faust, aiokafka, pydantic schemas) never die: keep the collector from rescanning
        # them on every full collection (long pauses of the loop, seen in the SSE gateway too).
        gc.freeze()
        logger.info("worker ready", extra={"processes": self.pool.size, "batch_max_size": settings.batch_max_size})
        return self.runner

    def _on_progress(self, job_id: str, fraction: float) -> None:
        if self.runner is not None:
            self.runner.on_progress(job_id, fraction)

    def clear(self) -> None:
        """Called by Faust's flow control on revocation (and resume): drop jobs not yet started."""
        if self.runner is not None:
            self.runner.drop_pending()

    async def stop(self) -> None:
        if self.control is not None:
            await asyncio.to_thread(self.control.stop)
        if self.runner is not None:
            await self.runner.stop()
        if self.pool is not None:
            await self.pool.close()
        if self._outbox is not None:
            await self._outbox.stop()
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close)


class ConsumerFlow:
    """``PartitionFlow`` on the Faust consumer: pausing a partition stops handing over its records from the
    next fetch on (those already fetched stay in the client's buffer); a partition no longer assigned is left
    alone. Only with our consumer (``processors.consumer``): without it reading ahead is bounded by
    ``JOBSTREAM_WORKER_MAX_PENDING`` alone."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def pause(self, topic: str, partition: int) -> None:
        client = self._app.consumer
        if isinstance(client, consumer.Consumer):  # Faust's own would skip the rest of the fetch: never pause it
            client.pause_later({TP(topic, partition)})

    def resume(self, topic: str, partition: int) -> None:
        tp = TP(topic, partition)
        client = self._app.consumer
        if tp in client.assignment():
            client.resume_partitions({tp})


def create_app(settings: Settings, kafka: KafkaConnection, *, worker_index: int = 0) -> faust.App:
    """Build the processors' Faust app (one per worker process)."""
    registry.load_plugins(plugin_modules(settings))  # batch keys are computed here, in the worker
    datadir = Path(settings.data_dir).resolve() / "faust" / f"worker-{worker_index}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topic(APP_ID),
        broker=f"kafka://{kafka.bootstrap}",
        broker_credentials=kafka.faust_credentials(),
        datadir=str(datadir),
        value_serializer="raw",
        key_serializer="raw",
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        # aiokafka sends no new fetch while another partition's fresh records wait: under a flood a quiet
        # tenant's next record waits behind the flooded partition's fetch (README: the trade-off measured).
        consumer_max_fetch_size=settings.worker_fetch_bytes,
        # Records one hand-over takes (from one partition, then the next in turn): what a pause lets through,
        # and how long a record of another partition, already fetched, may wait (a few ms per record).
        broker_max_poll_records=min(settings.worker_poll_records, settings.worker_partition_read_ahead),
        # Records fetched but not yet taken in are not counted against any partition's read-ahead, and are
        # taken in order: Faust's 4,096 would put seconds of a flooding tenant's backlog ahead of anyone.
        stream_buffer_maxsize=settings.worker_stream_buffer,
        producer_max_request_size=settings.max_message_bytes,
        producer_acks=-1,
        broker_session_timeout=settings.worker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_s / 4),
    )
    # a cheaper per-record hand-over from the fetch loop to the stream, and our fetch wait
    consumer.install(app, fetch_wait_ms=settings.worker_fetch_wait_ms)
    requested = app.topic(settings.topic(topics.REQUESTED), key_type=bytes, value_type=bytes)
    runtime = WorkerRuntime(settings, kafka, ConsumerFlow(app))
    app.flow_control.manage_queue(runtime)  # type: ignore[arg-type]  # duck-typed: Faust only calls .clear()

    @app.agent(requested)
    async def process(stream: faust.StreamT[bytes]) -> None:
        runner = await runtime.start()
        async for event in stream.noack().events():  # type: ignore[attr-defined]  # Stream.noack is not on StreamT
            message = event.message
            await runner.submit(
                event.value,
                event.ack,
                Source(message.topic, message.partition, message.offset),
                forget=functools.partial(app.consumer.unacked.discard, message),
                headers=message.headers or None,  # a job's trace context, when its request has one
            )
            del event, message

    # sent after Faust waited for running batches; Faust's signal typing rejects a coroutine receiver
    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # see the line above
    async def _stop_runtime(app: faust.App, **kwargs: Any) -> None:
        await runtime.stop()

    return app


def _use_uvloop() -> bool:
    """Run the worker's loop on uvloop when it is installed (it comes with ``uvicorn[standard]``): every
    job costs the loop several task steps and callbacks (Faust's hand-over, the runner, the outbox), and
    uvloop does those at a fraction of asyncio's cost. Without it, the standard loop runs."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run_worker(
    settings: Settings,
    kafka: KafkaConnection,
    *,
    worker_index: int = 0,
    loglevel: str = "info",
    parent_pid: int | None = None,
) -> None:
    """Run one worker until SIGTERM/SIGINT (blocks; Faust owns the event loop).

    With ``parent_pid`` the worker also stops when that process is gone, and exits at most
    ``worker_orphan_grace_s`` later even if the graceful stop still waits (for a running batch,
    or a broker that died with the parent); its calculation processes die with it.
    """
    if parent_pid is not None:
        watch_parent(parent_pid, settings.worker_orphan_grace_s)
    kafka = kafka.for_role("worker")
    topics.ensure_topics(kafka, settings)
    _use_uvloop()
    app = create_app(settings, kafka, worker_index=worker_index)
    # JSON log lines (JOBSTREAM_LOG_FORMAT=json): keep the handler the CLI set up instead of Faust's own.
    override_logging = settings.log_format != "json"
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False, override_logging=override_logging)
    worker.execute_from_commandline()
