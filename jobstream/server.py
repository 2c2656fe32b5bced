"""Builds the HTTP process: ingest API, SSE gateway, sink and webhook notifier, in any combination.

``jobstream up`` runs all three in one process (the only one that opens chDB);
the distributed layout runs each role in its own container. The factory takes
settings (and the Kafka connection) and owns the life of what it starts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.telemetry import TelemetryConfig

from calculations import registry
from console import routes as console_routes
from dead_letters import routes as dead_letter_routes
from dead_letters.book import DeadLetterBook, DeadLetterConfig
from edge import cors, problems
from edge import metrics as edge_metrics
from edge.auth import KeyRing
from edge.body_limit import BodyLimit
from edge.webhook_url import WebhookPolicy
from ingest_api import routes as api_routes
from ingest_api.admission import Admission, AdmissionConfig
from ingest_api.backpressure import LagConfig, LagMonitor, SubmitSlots
from ingest_api.finished import FinishedTail
from ingest_api.idempotency import IdempotencyKeys, KeyConfig
from ingest_api.reuse import ReuseConfig, ReuseIndex
from ingest_api.shortcut import SubmitShortcut
from ingest_api.waits import JobWaits
from notifier import routes as notifier_routes
from notifier.notifier import Notifier
from notifier.tenant_secrets import WebhookSecrets
from replay import diff as replay_diff
from replay import routes as replay_routes
from replay.book import ReplayBook
from replay.runner import ReplayConfig, Replayer
from sink import routes as sink_routes
from sink.query import analyst_login
from sink.reuses import ReuseSink, ReuseSinkConfig
from sink.sink import Sink, SinkConfig
from sink.webhook_log import WebhookLog
from sse_gateway import routes as sse_routes
from sse_gateway.fanout import Fanout, FanoutConfig
from store.clickhouse import ClickHouseStore, ServerAccess
from store.recent import RecentJobs
from streams import topics
from streams.acls import check_access
from streams.backlog import TenantBacklog
from streams.events import JobEvent
from streams.kafka_config import KafkaConnection
from streams.producer import AsyncProducer
from streams.settings import Settings
from streams.topics import JobTopics
from streams.wire import WireEvent
from telemetry import metrics

logger = logging.getLogger(__name__)

ROLES = frozenset({"api", "gateway", "sink", "notifier"})


def create_app(
    settings: Settings,
    roles: Iterable[str] = ROLES,
    *,
    kafka: KafkaConnection | None = None,
    store: ClickHouseStore | None = None,
) -> FastAPI:
    """The FastAPI app for ``roles``, against ``kafka`` (default: the settings' cluster); pass ``store``
    to share one ClickHouse client (chDB)."""
    kafka = kafka or KafkaConnection.from_settings(settings)
    roles = frozenset(roles)
    unknown = roles - ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}; choose from {sorted(ROLES)}")

    # Each role's clients log in as that role's principal (its own ACLs) when the connection knows one.
    as_role = {role: kafka.for_role(role) for role in kafka_roles(roles)}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for connection in as_role.values():  # fail fast, naming the cause: login, certificate, ACLs
            await asyncio.to_thread(check_access, connection, settings)
        if as_role:
            await asyncio.to_thread(topics.ensure_topics, next(iter(as_role.values())), settings)
            # requests go to partitions the topic has, whatever JOBSTREAM_REQUESTED_PARTITIONS says
            partitions = await asyncio.to_thread(
                topics.requested_partition_count, next(iter(as_role.values())), settings
            )
            app.state.job_topics = JobTopics.from_settings(settings, partitions)
        own_store = store is None
        app.state.store = store or await asyncio.to_thread(
            ClickHouseStore,
            settings.clickhouse_url,
            analyst=analyst_login(settings),
            access=ServerAccess.from_settings(settings),
        )
        started: list = []
        try:
            if "api" in roles:
                app.state.producer = AsyncProducer(
                    as_role["api"], settings.produce_timeout_s, settings.delivery_timeout_s
                )
                started.append(app.state.producer)
                app.state.idempotency = IdempotencyKeys(as_role["api"], KeyConfig.from_settings(settings)).start()
                started.append(app.state.idempotency)
                app.state.reuse = ReuseIndex(as_role["api"], ReuseConfig.from_settings(settings)).start()
                started.append(app.state.reuse)
                app.state.lag = LagMonitor(as_role["api"], LagConfig.from_settings(settings)).start()
                started.append(app.state.lag)
                backlog = TenantBacklog(
                    as_role["api"],
                    settings.topic(topics.EVENTS),
                    settings.tenant_backlog_window_s,
                    on_tick=_export_waiting if settings.metrics else None,
                    fetch=settings.bulk_reader_fetch(),
                ).start()
                started.append(backlog)
                app.state.admission = Admission(AdmissionConfig.from_settings(settings), backlog)
                app.state.replays = ReplayBook(as_role["replay"], settings.topic(topics.REPLAYS)).start()
                started.append(app.state.replays)
                app.state.replayer = _replayer(app, as_role["replay"], settings)
                started.append(app.state.replayer)
                if "gateway" not in roles:  # long-polls learn of finished jobs from a tail of their own
                    app.state.finished_tail = _finished_tail(app, as_role["api"], settings).start()
                    started.append(app.state.finished_tail)
                app.state.dead_letters = DeadLetterBook(
                    as_role["api"], DeadLetterConfig.from_settings(settings)
                ).start()
                started.append(app.state.dead_letters)
            if roles & {"api", "notifier"}:
                app.state.webhook_secrets = WebhookSecrets.from_settings(
                    as_role["api" if "api" in roles else "notifier"], settings
                ).start()
                started.append(app.state.webhook_secrets)
            if "gateway" in roles:  # the fanout tells long-polls (and read-your-writes) what it sees
                observers = [app.state.recent.observe, app.state.waits.observe]
                app.state.fanout = Fanout(
                    as_role["gateway"], FanoutConfig.from_settings(settings), observers=observers
                ).start()
                started.append(app.state.fanout)
            if "sink" in roles:
                app.state.sink = Sink(
                    as_role["sink"], app.state.store, SinkConfig.from_settings(settings), settings.bulk_reader_fetch()
                ).start()
                started.append(app.state.sink)
                app.state.reuse_sink = ReuseSink(
                    as_role["sink"], app.state.store, ReuseSinkConfig.from_settings(settings)
                ).start()
                started.append(app.state.reuse_sink)
                app.state.webhook_log = WebhookLog(as_role["sink"], app.state.store, settings).start()
                started.append(app.state.webhook_log)
            if "notifier" in roles:
                app.state.notifier = await Notifier(as_role["notifier"], settings, app.state.webhook_secrets).start()
                started.append(app.state.notifier)
            if "api" in roles:  # not ready before every stored Idempotency-Key is known
                if not await asyncio.to_thread(app.state.idempotency.loaded.wait, 120):
                    raise RuntimeError("could not load the stored Idempotency-Keys from Kafka in 120 s")
                if not await asyncio.to_thread(app.state.replays.loaded.wait, 120):
                    raise RuntimeError("could not load the recorded replays from Kafka in 120 s")
                if not await asyncio.to_thread(app.state.webhook_secrets.loaded.wait, 120):
                    raise RuntimeError("could not load the webhook secret generations from Kafka in 120 s")
                if not await asyncio.to_thread(app.state.dead_letters.loaded.wait, 120):
                    raise RuntimeError("could not read the dead letters from Kafka in 120 s")
                if not await asyncio.to_thread(app.state.reuse.loaded.wait, 120):
                    raise RuntimeError("could not load the reuse index from Kafka in 120 s")
                if not await asyncio.to_thread(backlog.loaded.wait, 60):  # admits meanwhile: a soft limit
                    logger.warning("tenant backlog not counted within 60 s; per-tenant caps see part of it")
            app.state.ready = True
            # What start-up built (chDB, FastAPI, models) lives as long as the process: keep it out
            # of the collector's full passes, which otherwise pause the loop 100+ ms (SSE p99).
            gc.freeze()
            logger.info("serving roles %s", ",".join(sorted(roles)))
            yield
        finally:
            app.state.ready = False
            for component in reversed(started):
                if isinstance(component, Notifier):
                    await component.aclose()
                    continue
                stop = getattr(component, "close", None) or component.stop
                await asyncio.to_thread(stop)
            if own_store:
                app.state.store.close()

    app = FastAPI(title="jobstream", version="0.1.0", lifespan=lifespan, telemetry=_telemetry())
    app.state.settings = settings
    # The API validates params against the same calculations the workers run (JOBSTREAM_PLUGINS too).
    registry.load_plugins([m.strip() for m in settings.plugins.split(",") if m.strip()])
    app.state.ready = False
    app.state.recent = RecentJobs()
    app.state.job_topics = JobTopics.from_settings(settings)
    app.state.waits = JobWaits(settings.max_waits, settings.wait_memory_jobs)
    app.state.submits = SubmitSlots(settings.max_submits_in_flight)
    app.state.webhook_policy = WebhookPolicy.from_settings(settings)
    app.state.keyring = KeyRing.parse(
        settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_keys_file
    )
    problems.install(app)
    if "api" in roles:  # POST /v1/jobs past FastAPI's routing; added first, so BodyLimit wraps it
        app.add_middleware(SubmitShortcut)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s)
    if "api" in roles:
        app.include_router(api_routes.router)
        app.include_router(replay_routes.router)
        app.include_router(notifier_routes.router)
        app.include_router(dead_letter_routes.router)
    if "gateway" in roles:
        sse_routes.install(app, settings)
    if roles & {"api", "sink"}:  # SQL for analysts and /v1/stats: served where the store is
        app.include_router(sink_routes.router)
    # JOBSTREAM_METRICS=false: no endpoint, so the submit path records nothing either
    metrics.configure(settings.metrics_tenant_label, settings.metrics_max_tenants, recording=settings.metrics)
    if settings.metrics:  # GET /metrics; outside BodyLimit (its 413s count), inside CORS
        edge_metrics.install(app)
    if "api" in roles:  # the console (/ui) talks to this process's API
        console_routes.install(app)
    cors.install(app, settings)

    @app.get("/healthz", responses=problems.problem_responses(503))
    async def healthz(request: Request) -> dict[str, str]:
        if not request.app.state.ready:
            raise problems.Problem(503, "Starting", "not ready yet")
        return {"status": "ok"}

    return app


def kafka_roles(roles: Iterable[str]) -> list[str]:
    """The Kafka principals an HTTP process with ``roles`` acts as (the API runs replays too)."""
    return [
        r for r in ("api", "replay", "gateway", "sink", "notifier") if r in roles or (r == "replay" and "api" in roles)
    ]


def _telemetry() -> TelemetryConfig:
    """FastAPI's native OpenTelemetry, on for each signal whose global provider is set when the app is built.

    Left to itself FastAPI asks OpenTelemetry for all three providers on every request (each an
    ``os.environ`` lookup), ~10% of a ``POST /v1/jobs``'s CPU (docs/benchmarks.md, "Ingest API"),
    although jobstream configures none. OpenTelemetry hands out a proxy provider until one is
    set; a deployment that sets them (``opentelemetry-instrument``, or in code before
    ``create_app``) keeps the instrumentation.
    """
    from opentelemetry import _logs, metrics, trace

    def configured(provider: object) -> bool:
        return "Proxy" not in type(provider).__name__

    return {
        "tracing": configured(trace.get_tracer_provider()),
        "metrics": configured(metrics.get_meter_provider()),
        "logs": configured(_logs.get_logger_provider()),
    }


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[JobEvent], None], event: JobEvent) -> None:
    loop.call_soon_threadsafe(fn, event)


def _export_waiting(backlog: TenantBacklog) -> None:
    metrics.waiting(backlog.waiting_by_tenant())


def _finished_tail(app: FastAPI, kafka: KafkaConnection, settings: Settings) -> FinishedTail:
    """What the fanout's observers get where no gateway runs: live events for waits and read-your-writes."""
    waits: JobWaits = app.state.waits
    recent: RecentJobs = app.state.recent

    def observe(events: list[WireEvent]) -> None:
        for event in events:
            recent.observe(event)
            waits.observe(event)

    return FinishedTail(kafka, settings.topic(topics.EVENTS), observe)


def _replayer(app: FastAPI, kafka: KafkaConnection, settings: Settings) -> Replayer:
    """Replays run in the API process: statuses from its store, replayed jobs remembered for read-your-writes."""
    loop = asyncio.get_running_loop()
    store: ClickHouseStore = app.state.store
    recent: RecentJobs = app.state.recent
    return Replayer(
        kafka,
        ReplayConfig.from_settings(settings),
        app.state.replays,
        statuses=lambda tenant, ids: replay_diff.statuses(store, tenant, ids),
        on_emit=lambda queued: _call_soon(loop, recent.add, queued),
    )
