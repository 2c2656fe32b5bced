"""The ``jobstream`` command: run the pipeline, or one role of it.

Settings are read here, once, from the environment and the command line, and
passed down; nothing below reads ``os.environ``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import typer

from streams.kafka_config import KafkaConnection
from streams.settings import Settings

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="jobstream: heavy calculations behind HTTP, on Kafka."
)
logger = logging.getLogger("jobstream")


def _settings(**overrides: Any) -> Settings:
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def _logging(level: str, settings: Settings | None = None) -> None:
    from telemetry.logs import configure

    configure(level, (settings or _settings()).log_format)  # JOBSTREAM_LOG_FORMAT
    for noisy in ("aiokafka", "faust", "mode", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _tracing(roles: set[str]) -> None:
    """Export this process's spans when the standard OTEL_* environment asks for it (README, "Tracing").
    ``service.name`` is ``jobstream-<role>`` (``jobstream-server`` for several roles in one process)."""
    from telemetry import tracing

    tracing.setup(next(iter(roles)) if len(roles) == 1 else "server", os.environ)


def base_url(url: str | None, settings: Settings | None = None) -> str:
    """Where the CLI's client commands find the service: --url, else JOBSTREAM_PUBLIC_URL, else host:port."""
    settings = settings or _settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    scheme = "https" if settings.tls_certfile else "http"
    return (url or settings.public_url or f"{scheme}://{host}:{settings.port}").rstrip("/")


def _loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _warn_keys_in_clear(settings: Settings) -> None:
    """API keys over plain HTTP on a reachable address travel in clear: say so, loudly, at start."""
    if (settings.api_keys or settings.api_keys_file) and not settings.tls_certfile and not _loopback(settings.host):
        message = (
            f"WARNING: API keys are set but HTTP on {settings.host}:{settings.port} is not TLS: keys and "
            "results travel in clear. Set JOBSTREAM_TLS_CERTFILE and JOBSTREAM_TLS_KEYFILE, or terminate "
            "TLS in front of jobstream."
        )
        logger.warning(message)
        typer.secho(message, fg=typer.colors.RED, bold=True, err=True)


def _check_kafka(connection: KafkaConnection, settings: Settings, roles: list[str]) -> None:
    """Each role's Kafka login, the broker's certificate and the role's ACLs, before anything starts:
    a bad one ends the command with one line naming the cause (exit status 3)."""
    from streams.acls import KafkaAccessError, check_access
    from streams.kafka_config import KafkaConfigError

    try:
        for role in roles:
            check_access(connection.for_role(role), settings)
    except (KafkaAccessError, KafkaConfigError) as exc:
        logger.error("cannot use Kafka: %s", exc)
        raise typer.Exit(3) from None


def _refuse_open_bind_without_keys(settings: Settings) -> None:
    """Without API keys anyone who can reach the port can submit and read jobs: loopback only."""
    if settings.api_keys or settings.api_keys_file:
        return
    if not _loopback(settings.host):
        raise typer.BadParameter(
            f"refusing to bind {settings.host} without API keys; set JOBSTREAM_API_KEYS or bind 127.0.0.1"
        )


def _local_webhooks(settings: Settings) -> Settings:
    """Without API keys (loopback only) a developer may point webhooks at a receiver on this machine, over
    http: JOBSTREAM_WEBHOOK_ALLOW_PRIVATE goes on unless it was set explicitly."""
    if settings.api_keys or settings.api_keys_file or "webhook_allow_private" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"webhook_allow_private": True})


def _serve(settings: Settings, connection: KafkaConnection, roles: set[str]) -> None:
    import uvicorn

    from jobstream.server import create_app, kafka_roles

    _check_kafka(connection, settings, kafka_roles(roles))
    _warn_keys_in_clear(settings)
    uvicorn.run(
        create_app(settings, roles, kafka=connection),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=5,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
        # WebSocket streams' heartbeats are protocol pings; a peer that does not answer is dropped
        ws_ping_interval=settings.sse_heartbeat_s,
        ws_ping_timeout=settings.sse_send_timeout_s,
    )


def _start_worker(settings: Settings, connection: KafkaConnection, index: int) -> subprocess.Popen[bytes]:
    """A worker that ends with us: SIGTERM from the kernel when we die (``die_with_parent``), and
    ``--parent-pid`` makes it exit within ``JOBSTREAM_WORKER_ORPHAN_GRACE_S`` even if its stop hangs."""
    from jobstream.workers import worker_command, worker_env
    from streams.lifeline import die_with_parent

    return subprocess.Popen(
        worker_command(index, parent_pid=os.getpid()),
        env=worker_env(settings, connection),
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


class WorkerSupervisor:
    """Keeps ``count`` worker processes running: one that dies is started again (a crash
    loses nothing — its uncommitted requests are redelivered to the replacement)."""

    def __init__(self, settings: Settings, connection: KafkaConnection) -> None:
        import threading

        # The API's /metrics covers these workers (one multiprocess directory); no port of their own.
        settings = settings.model_copy(update={"worker_metrics_port": 0})
        self._settings = settings
        self._connection = connection
        self.processes = [_start_worker(settings, connection, i) for i in range(settings.workers)]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="worker-supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for index, process in enumerate(self.processes):
                if process.poll() is not None and not self._stopping.is_set():
                    logger.warning("worker %d exited with %s; starting it again", index, process.returncode)
                    self.processes[index] = _start_worker(self._settings, self._connection, index)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        stop_processes(self.processes)


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float = 15.0) -> None:
    """SIGTERM all, wait for each until a shared deadline, SIGKILL what is left."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@app.command()
def up(
    host: str | None = typer.Option(None, help="Bind address (env JOBSTREAM_HOST, default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="HTTP port (env JOBSTREAM_PORT, default 8000)."),
    workers: int | None = typer.Option(None, help="Processor worker processes (env JOBSTREAM_WORKERS)."),
    data_dir: Path | None = typer.Option(None, help="Local state (env JOBSTREAM_DATA_DIR, default ./.jobstream)."),
    log_level: str = typer.Option("info", help="Log level."),
) -> None:
    """Run everything on this machine: broker (unless KAFKA_BOOTSTRAP), workers, API + SSE + sink + webhooks."""
    from store.clickhouse import redact

    settings = _settings(host=host, port=port, workers=workers, data_dir=data_dir)
    _logging(log_level, settings)
    _tracing({"api", "gateway", "sink"})
    _refuse_open_bind_without_keys(settings)
    settings = _local_webhooks(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if settings.metrics:  # before anything imports prometheus_client; the workers inherit it
        from telemetry.multiprocess import use_directory

        use_directory(settings.data_dir / "metrics")

    from streams.broker import kafka_broker
    from streams.topics import ensure_topics

    with kafka_broker(settings) as connection:
        _check_kafka(connection, settings, ["admin"])
        ensure_topics(connection.for_role("admin"), settings)  # topics are created by the admin principal
        _check_kafka(connection, settings, ["worker"])
        supervisor = WorkerSupervisor(settings, connection)
        base = f"{'https' if settings.tls_certfile else 'http'}://{settings.host}:{settings.port}"
        typer.echo(
            f"\njobstream is up\n  API + SSE  {base}  (docs {base}/docs)\n  Kafka      {connection.bootstrap}"
            f" ({connection.security.protocol})\n"
            f"  ClickHouse {redact(settings.clickhouse_url)}\n  workers    {settings.workers}\n  data       "
            f"{settings.data_dir.resolve()}\nCtrl-C stops everything.\n"
        )
        try:
            _serve(settings, connection, {"api", "gateway", "sink", "notifier"})
        finally:
            logger.info("stopping %d worker(s)", settings.workers)
            supervisor.stop()
    logger.info("stopped")


@app.command()
def serve(
    role: list[str] = typer.Option(
        ["api", "gateway", "sink"], help="Roles to run: api, gateway, sink, notifier (webhooks)."
    ),
    host: str | None = typer.Option(None, help="Bind address (env JOBSTREAM_HOST)."),
    port: int | None = typer.Option(None, help="HTTP port (env JOBSTREAM_PORT)."),
    log_level: str = typer.Option("info"),
) -> None:
    """Run HTTP roles against an existing broker (KAFKA_BOOTSTRAP) — the distributed layout."""
    settings = _settings(host=host, port=port)
    _logging(log_level, settings)
    if not settings.kafka_bootstrap:
        raise typer.BadParameter("set KAFKA_BOOTSTRAP to the cluster to use")
    _tracing(set(role))
    _serve(settings, KafkaConnection.from_settings(settings), set(role))


@app.command()
def worker(
    index: int = typer.Option(0, help="Worker number (keeps each worker's local state apart)."),
    batch_max_size: int | None = typer.Option(
        None, help="Most jobs in one batch; 1 turns batching off (env JOBSTREAM_BATCH_MAX_SIZE)."
    ),
    batch_max_wait_ms: int | None = typer.Option(
        None, help="Longest wait to fill a batch (env JOBSTREAM_BATCH_MAX_WAIT_MS)."
    ),
    latency_target_ms: int | None = typer.Option(
        None, help="Latency batches aim for (env JOBSTREAM_LATENCY_TARGET_MS)."
    ),
    concurrency: int | None = typer.Option(
        None, help="Calculation processes = batches run at once; 0: one per core (env JOBSTREAM_CALC_PROCESSES)."
    ),
    parent_pid: int | None = typer.Option(
        None,
        help="Exit when this process dies (after at most JOBSTREAM_WORKER_ORPHAN_GRACE_S of graceful "
        "stop); `jobstream up` passes its own pid.",
    ),
    log_level: str = typer.Option("info"),
) -> None:
    """Run one processor worker (Faust) against KAFKA_BOOTSTRAP."""
    settings = _settings(
        batch_max_size=batch_max_size,
        batch_max_wait_ms=batch_max_wait_ms,
        latency_target_ms=latency_target_ms,
        calc_processes=concurrency,
    )
    _logging(log_level, settings)
    if not settings.kafka_bootstrap:
        raise typer.BadParameter("set KAFKA_BOOTSTRAP to the cluster to use")
    _tracing({"worker"})
    if settings.metrics and settings.worker_metrics_port:  # before the worker's modules import prometheus_client
        _serve_worker_metrics(settings, index)
    from processors.app import run_worker

    connection = KafkaConnection.from_settings(settings)
    _check_kafka(connection, settings, ["worker"])
    run_worker(settings, connection, worker_index=index, loglevel=log_level, parent_pid=parent_pid)


def _serve_worker_metrics(settings: Settings, index: int) -> None:
    """A worker on its own (the distributed layout): its metrics and its calculation processes' on
    JOBSTREAM_WORKER_METRICS_PORT, added up from a multiprocess directory of its own."""
    from telemetry.multiprocess import directory, use_directory

    if directory() is None:
        use_directory(settings.data_dir / "metrics" / f"worker-{index}")
    from telemetry import metrics

    metrics.serve(settings.worker_metrics_port, settings.host)


@app.command()
def kafka(
    provision_only: bool = typer.Option(False, "--provision-only", help="Only fetch the broker jars with Maven."),
    port: int = typer.Option(9092, help="Broker port."),
    data_dir: Path | None = typer.Option(None, help="Broker data (default <data dir>/kafka)."),
) -> None:
    """Fetch (and optionally run, in the foreground) the local Apache Kafka broker."""
    from streams.local_kafka import LocalKafka, kafka_version, provision

    _logging("info")
    provision()
    if provision_only:
        typer.echo(f"Kafka {kafka_version()} jars are ready")
        return
    settings = _settings()
    with LocalKafka(
        data_dir or settings.data_dir / "kafka",
        port=port,
        heap=settings.local_kafka_heap,
        security=settings.local_kafka_security,
    ) as broker:
        typer.echo(f"Kafka {kafka_version()} at {broker.bootstrap}; Ctrl-C stops it")
        if broker.secured:  # where a client finds what it needs (the passwords stay in the 0600 file)
            typer.echo(
                f"SASL_SSL, SCRAM-SHA-512: CA {broker.ca_file}, users jobstream-<role> with passwords in "
                f"{broker.security_dir / 'users.json'}; grant ACLs as jobstream-admin (jobstream kafka-acls)"
            )
        try:
            broker.wait()
        except KeyboardInterrupt:
            pass


@app.command("kafka-acls")
def kafka_acls(
    user: list[str] = typer.Option(
        [], help="role=USER for a role whose principal is not jobstream-<role> (repeatable), e.g. sink=svc-sink."
    ),
) -> None:
    """Print the ACLs each role needs (least privilege) as kafka-acls.sh commands for your own cluster,
    for the topics of JOBSTREAM_TOPIC_PREFIX. Topic creation is left to you (or an admin principal)."""
    from streams.acls import acl_commands, role_grants

    settings = _settings()
    principals = {role: f"jobstream-{role}" for role in role_grants(settings)}
    for item in user:
        role, _, name = item.partition("=")
        if role not in principals or not name:
            raise typer.BadParameter(f"expected role=USER with role one of {sorted(principals)}", param_hint="--user")
        principals[role] = name
    typer.echo(acl_commands(principals, settings), nl=False)


@app.command()
def watch(
    job_id: str = typer.Argument(..., help="The job to watch."),
    url: str | None = typer.Option(
        None, envvar="JOBSTREAM_URL", help="Base URL of the API/gateway (default http://JOBSTREAM_HOST:JOBSTREAM_PORT)."
    ),
    api_key: str | None = typer.Option(None, envvar="JOBSTREAM_API_KEY", help="API key (Bearer)."),
    last_event_id: str | None = typer.Option(None, help="Resume after this event id (seq)."),
    as_json: bool = typer.Option(False, "--json", help="Print each event as one JSON line."),
) -> None:
    """Follow a job's events live (reconnecting with Last-Event-ID) until it finishes.

    Exit status: 0 succeeded, 1 failed or cancelled, 2 the stream could not be opened.
    """
    import orjson

    from jobstream.client import StreamError, watch_job

    base = base_url(url)
    outcome = None
    try:
        for event in watch_job(base, job_id, api_key=api_key, last_event_id=last_event_id):
            if as_json:
                typer.echo(orjson.dumps({"id": event.id, "type": event.type, "data": event.data}).decode())
            elif event.type == "progress":
                typer.echo(f"{event.id:>10}  progress  {float(event.data.get('data', {}).get('progress', 0)):.0%}")
            elif event.type == "reset":
                typer.echo(f"{'':>10}  reset     {event.data.get('detail')} (see {base}/v1/jobs/{job_id})")
            else:
                detail = event.data.get("data", {})
                shown = detail.get("result", detail.get("error", "")) if event.terminal else ""
                typer.echo(f"{event.id:>10}  {event.type:<9} {orjson.dumps(shown).decode() if shown else ''}")
            if event.terminal:
                outcome = event.type
    except StreamError as exc:
        typer.echo(f"cannot watch {job_id}: {exc}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(0 if outcome == "succeeded" else 1)


@app.command()
def sql(
    query: str = typer.Argument(
        ..., help='One read-only SQL statement, e.g. "SELECT status, count() FROM jobs GROUP BY status".'
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="Output: table, csv or json."),
    url: str | None = typer.Option(
        None,
        envvar="JOBSTREAM_URL",
        help="Ask this jobstream service (embedded chDB); default http://JOBSTREAM_HOST:JOBSTREAM_PORT.",
    ),
    api_key: str | None = typer.Option(None, envvar="JOBSTREAM_API_KEY", help="API key (Bearer) of an SQL tenant."),
) -> None:
    """Run SQL on the results store: straight to a ClickHouse server (CLICKHOUSE_URL=http…), or through the
    running service's POST /v1/sql with embedded chDB (only that process may open it). Read-only, limited."""
    from sink.query import FORMATS, QueryFailed, analyst_login, limits_from, render, run_direct, run_remote

    if fmt not in FORMATS:
        raise typer.BadParameter(f"choose one of {', '.join(FORMATS)}", param_hint="--format")
    settings = _settings()
    try:
        if url is None and settings.clickhouse_url.startswith(("http://", "https://")):
            from store.clickhouse import ServerAccess

            result = run_direct(
                settings.clickhouse_url,
                query,
                limits_from(settings),
                login=analyst_login(settings),
                access=ServerAccess.from_settings(settings),
            )
        else:
            from jobstream.client import tls_verify

            result = run_remote(
                base_url(url, settings),
                query,
                api_key=api_key,
                timeout_s=settings.sql_max_execution_s + 30,
                verify=tls_verify(settings.ca_file),
            )
    except QueryFailed as exc:
        typer.echo(f"query failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(render(result, fmt))


def _add_replay() -> None:
    from jobstream.replay_cli import replay_app

    app.add_typer(replay_app, name="replay")


def _add_client() -> None:
    from jobstream import client_cli

    client_cli.install(app)


_add_replay()
_add_client()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
