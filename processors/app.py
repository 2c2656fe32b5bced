"""The Faust app: one agent that batches ``jobs.requested`` and hands batches to the runner.

``stream.take(max, within=...)`` forms batches by size or wait. Acks (and so
offset commits) happen after the loop body returns, i.e. after every outcome
event was acknowledged by Kafka: at-least-once, with idempotent effects
downstream (results keyed by ``(job_id, calc_version)``, sink dedup).
"""

from __future__ import annotations

import logging
import multiprocessing
from pathlib import Path
from typing import Any

import faust

from processors.executor import create_pool
from processors.runner import BatchRunner
from streams import topics
from streams.events import JobEvent, dumps
from streams.settings import Settings

logger = logging.getLogger(__name__)

APP_ID = topics.PROCESSORS_GROUP


def create_app(settings: Settings, bootstrap: str, *, worker_index: int = 0) -> faust.App:
    """Build the processors' Faust app (one per worker process)."""
    datadir = Path(settings.data_dir).resolve() / "faust" / f"worker-{worker_index}"
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.topic(APP_ID),
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        value_serializer="raw",
        key_serializer="raw",
        topic_disable_leader=True,
        topic_allow_declare=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_max_request_size=settings.max_message_bytes,
        producer_acks=-1,
        broker_commit_every=settings.batch_max_size,
    )
    requested = app.topic(settings.topic(topics.REQUESTED), key_type=bytes, value_type=bytes)
    events = app.topic(settings.topic(topics.EVENTS), key_type=bytes, value_type=bytes)

    progress_queue: Any = multiprocessing.get_context("spawn").Manager().Queue()
    pool = create_pool(settings.calc_processes, progress_queue)

    async def emit(event: JobEvent) -> Any:
        # force=True: send now instead of attaching to the current event (we wait for acks ourselves).
        return await events.send(key=event.job_id.encode(), value=dumps(event), force=True)

    runner = BatchRunner(pool, emit, progress_queue)

    @app.agent(requested)
    async def process(stream: faust.StreamT[bytes]) -> None:
        await runner.start()
        async for batch in stream.take(settings.batch_max_size, within=settings.batch_max_wait_ms / 1000):
            await runner.run(list(batch))

    app.jobstream_pool = pool  # type: ignore[attr-defined]
    return app


def run_worker(settings: Settings, bootstrap: str, *, worker_index: int = 0, loglevel: str = "info") -> None:
    """Run one worker until SIGTERM/SIGINT (blocks; Faust owns the event loop)."""
    topics.ensure_topics(bootstrap, settings)
    app = create_app(settings, bootstrap, worker_index=worker_index)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    finally:
        app.jobstream_pool.shutdown(cancel_futures=True)  # type: ignore[attr-defined]
