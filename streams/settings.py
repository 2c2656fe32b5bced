"""One settings object for every jobstream service, read once at the edge.

Every limit the system enforces is a named field here with a default; the
README's configuration table lists them. Services receive a ``Settings``
instance; nothing below the CLI reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_core import to_json
from pydantic_settings import BaseSettings, SettingsConfigDict


class TenantOverrides(BaseModel):
    """One tenant's departures from the tenant defaults (``JOBSTREAM_TENANT_OVERRIDES``); unset: the default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float | None = Field(default=None, gt=0, le=1_000, description="Share of a busy worker, relative.")
    max_queued_jobs: int | None = Field(default=None, ge=1, description="Jobs waiting past which submits get 429.")
    rate_per_s: float | None = Field(default=None, gt=0, description="Submits per second (token bucket).")
    rate_burst: int | None = Field(default=None, ge=1, description="Submits allowed at once above the rate.")


class Settings(BaseSettings):
    """jobstream configuration; env vars are ``JOBSTREAM_<FIELD>`` unless noted."""

    model_config = SettingsConfigDict(env_prefix="JOBSTREAM_", frozen=True, extra="ignore", populate_by_name=True)

    # --- where things are -------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "JOBSTREAM_KAFKA_BOOTSTRAP"),
        description="Existing Kafka cluster (host:port,...). Unset: Docker, else a local broker.",
    )
    clickhouse_url: str = Field(
        default="chdb://.jobstream/clickhouse",
        validation_alias=AliasChoices("CLICKHOUSE_URL", "JOBSTREAM_CLICKHOUSE_URL"),
        description="chdb://<dir> (embedded, one process per dir) or http(s)://host:8123.",
    )
    data_dir: Path = Field(default=Path(".jobstream"), description="Local state: broker logs, chDB.")
    host: str = Field(default="127.0.0.1", description="HTTP bind address.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port.")
    public_url: str | None = Field(default=None, description="Base URL put in links; unset means root-relative links.")
    clickhouse_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("CLICKHOUSE_PASSWORD", "JOBSTREAM_CLICKHOUSE_PASSWORD"),
        description="Password of CLICKHOUSE_URL's user (keeps it out of the URL; never logged).",
    )
    clickhouse_ca_file: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("CLICKHOUSE_CA_FILE", "JOBSTREAM_CLICKHOUSE_CA_FILE"),
        description="PEM CA bundle an https:// CLICKHOUSE_URL's certificate is checked against.",
    )

    # --- Kafka topics -----------------------------------------------------
    topic_prefix: str = Field(default="", description="Prefix for every topic (isolates test runs).")
    requested_partitions: int = Field(
        default=6, ge=1, le=1000, description="Partitions of jobs.requested (max worker parallelism)."
    )
    events_partitions: int = Field(default=6, ge=1, le=1000, description="Partitions of jobs.events.")
    replication_factor: int = Field(default=1, ge=1, le=16, description="Replication of topics we create.")
    max_message_bytes: int = Field(
        default=40 * 1024 * 1024, ge=1024, description="Largest Kafka message (topic max.message.bytes)."
    )
    kafka_linger_ms: float = Field(
        default=1.0,
        ge=0,
        le=1_000,
        description="How long a producer waits to fill a request to Kafka: fewer, larger requests for that latency.",
    )
    local_kafka_port: int = Field(
        default=9092, ge=0, le=65535, description="Port of the local broker `jobstream up` starts (0: any free)."
    )
    local_kafka_heap: str = Field(default="768m", description="JVM heap of the local broker.")
    local_kafka_security: Literal["plaintext", "sasl_ssl"] = Field(
        default="plaintext",
        description="The local broker's client listener: plaintext, or sasl_ssl (SCRAM, a CA generated at "
        "start, one principal per role with only its ACLs).",
    )

    # --- Kafka transport security (every confluent-kafka and Faust/aiokafka client) --------------
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=AliasChoices("KAFKA_SECURITY_PROTOCOL", "JOBSTREAM_KAFKA_SECURITY_PROTOCOL"),
        description="librdkafka security.protocol / aiokafka security_protocol.",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="SCRAM-SHA-512",
        validation_alias=AliasChoices("KAFKA_SASL_MECHANISM", "JOBSTREAM_KAFKA_SASL_MECHANISM"),
        description="librdkafka sasl.mechanism / aiokafka sasl_mechanism (SASL_* protocols).",
    )
    kafka_sasl_username: str | None = Field(
        default=None,
        min_length=1,
        validation_alias=AliasChoices("KAFKA_SASL_USERNAME", "JOBSTREAM_KAFKA_SASL_USERNAME"),
        description="librdkafka sasl.username / aiokafka sasl_plain_username.",
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SASL_PASSWORD", "JOBSTREAM_KAFKA_SASL_PASSWORD"),
        description="librdkafka sasl.password / aiokafka sasl_plain_password (never logged).",
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CA_LOCATION", "JOBSTREAM_KAFKA_SSL_CA_LOCATION"),
        description="PEM CA bundle the broker's certificate is checked against (unset: the system's).",
    )
    kafka_ssl_certificate_location: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_CERTIFICATE_LOCATION", "JOBSTREAM_KAFKA_SSL_CERTIFICATE_LOCATION"),
        description="PEM client certificate (mTLS).",
    )
    kafka_ssl_key_location: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_KEY_LOCATION", "JOBSTREAM_KAFKA_SSL_KEY_LOCATION"),
        description="PEM private key of the client certificate (mTLS).",
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_SSL_KEY_PASSWORD", "JOBSTREAM_KAFKA_SSL_KEY_PASSWORD"),
        description="Password of an encrypted client key.",
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True,
        validation_alias=AliasChoices("KAFKA_SSL_CHECK_HOSTNAME", "JOBSTREAM_KAFKA_SSL_CHECK_HOSTNAME"),
        description="Check the broker certificate's host name (librdkafka ssl.endpoint.identification.algorithm).",
    )
    kafka_role_credentials: SecretStr | None = Field(
        default=None,
        description="Per-role SASL logins 'role=user:password,...' (roles: admin, api, worker, gateway, sink, "
        "replay); a role not listed uses KAFKA_SASL_USERNAME.",
    )
    kafka_connect_timeout_s: float = Field(
        default=15.0, gt=0, le=600, description="Longest start-up check of Kafka access (credentials, TLS, ACLs)."
    )

    # --- auth ----------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        default=None, description="'tenant=key,...' pairs; unset: no auth, loopback only."
    )
    api_keys_file: Path | None = Field(default=None, description="File of 'tenant=key' lines (# comments).")
    tls_certfile: Path | None = Field(
        default=None, description="PEM certificate (chain): serve HTTPS (API, gateway, console, metrics)."
    )
    tls_keyfile: Path | None = Field(default=None, description="PEM private key of JOBSTREAM_TLS_CERTFILE.")
    ca_file: Path | None = Field(
        default=None, description="PEM CA bundle the CLI and Python client trust for https:// URLs."
    )

    # --- ingest API -------------------------------------------------------
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024, description="Largest request body (413 past it).")
    produce_timeout_s: float = Field(default=10.0, gt=0, description="Longest wait for Kafka's ack (503 past it).")
    retry_after_s: int = Field(default=1, ge=1, description="Retry-After on 202s and non-terminal reads.")
    batch_max_jobs: int = Field(default=1000, ge=1, le=100_000, description="Most jobs in one POST /v1/jobs:batch.")
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0, description="How long Idempotency-Keys are kept.")
    idempotency_max_keys: int = Field(default=1_000_000, ge=1, description="Most keys held in memory per API process.")
    max_queued_jobs: int = Field(default=100_000, ge=1, description="Processor lag past which submits get 429.")
    lag_check_s: float = Field(default=1.0, gt=0, description="How often the API measures processor lag.")
    list_max_limit: int = Field(
        default=1000, ge=1, description="Largest page of GET /v1/jobs and GET /v1/dead-letters."
    )
    max_submits_in_flight: int = Field(
        default=1024, ge=1, description="Submits waiting for Kafka at once per API process; past it 503 at once."
    )
    delivery_timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="How long the producer keeps trying to deliver a record (librdkafka "
        "message.timeout.ms); a 503 'outcome unknown' record may still land within it.",
    )
    retry_after_max_s: int = Field(default=30, ge=1, description="Largest Retry-After on 202s, reads and 429s.")
    max_listed_errors: int = Field(default=20, ge=1, le=10_000, description="Most field errors one 422 lists.")
    offload_body_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        description="Submit bodies larger than this are parsed and validated off the event loop.",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0, description="Longest wait for the next part of a request body; 408 past it."
    )
    max_wait_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Longest long-poll: `?wait=` and `Prefer: wait=` are capped at this many seconds.",
    )
    max_waits: int = Field(
        default=10_000,
        ge=0,
        description="Requests waiting for a job at once per API process; past it they answer at once.",
    )
    wait_memory_jobs: int = Field(
        default=10_000, ge=1, description="Finished jobs an API process remembers for waits (their terminal events)."
    )
    reuse_max_age_s: int = Field(
        default=86_400,
        ge=0,
        le=31_536_000,
        description="Largest reuse.max_age_s a submit may ask for; also how long jobs.reuse keeps an entry.",
    )
    reuse_max_entries: int = Field(
        default=1_000_000, ge=1, description="Most reusable jobs each API process remembers (the oldest go first)."
    )

    # --- tenants: fair sharing and admission ------------------------------------
    tenant_weight: float = Field(
        default=1.0, gt=0, le=1_000, description="A tenant's share of a busy worker, relative to the others."
    )
    tenant_max_queued_jobs: int = Field(
        default=20_000, ge=1, description="Jobs of one tenant waiting to start past which its submits get 429."
    )
    tenant_rate_per_s: float | None = Field(
        default=None, gt=0, description="Submits per second one tenant may make (unset: no rate limit)."
    )
    tenant_rate_burst: int = Field(default=100, ge=1, description="Submits one tenant may make at once above its rate.")
    tenant_overrides: dict[str, TenantOverrides] = Field(
        default_factory=dict,
        description="Per-tenant overrides of the four above, JSON keyed by the tenant names of the API keys: "
        '{"acme": {"weight": 3, "max_queued_jobs": 50000, "rate_per_s": 200, "rate_burst": 400}}.',
    )
    tenant_backlog_window_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * 86_400,
        description="How far back in jobs.events an API process looks at start-up to count each tenant's waiting "
        "jobs; a job still waiting after this long is no longer counted.",
    )
    max_start_within_s: float = Field(
        default=86_400.0, gt=0, le=30 * 86_400, description="Largest start_within_s a submission may ask for."
    )
    expiry_check_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="How often a worker ends the held jobs whose start_within_s passed (they also end at start).",
    )

    # --- processors -------------------------------------------------------
    workers: int = Field(default=1, ge=0, le=64, description="Processor worker processes `jobstream up` starts.")
    batch_max_size: int = Field(default=64, ge=1, le=10_000, description="Most jobs in one batch (1: no batching).")
    batch_max_wait_ms: int = Field(default=50, ge=1, le=60_000, description="Longest wait to fill a batch.")
    calc_processes: int = Field(default=0, ge=0, le=256, description="Calculation pool size per worker (0: cores).")
    latency_target_ms: int = Field(
        default=500, ge=1, le=3_600_000, description="Latency batches aim for: bounds batch wait and batch run time."
    )
    worker_max_pending: int = Field(default=10_000, ge=1, description="Jobs a worker holds before it stops reading.")
    retry_max_attempts: int = Field(default=3, ge=1, le=100, description="Attempts of a transiently failing job.")
    retry_backoff_ms: int = Field(default=200, ge=0, description="First retry delay; doubles per attempt, jittered.")
    retry_backoff_max_ms: int = Field(default=10_000, ge=0, description="Longest retry delay.")
    crash_max: int = Field(default=2, ge=1, le=100, description="Crashes of its process before a job is dead-lettered.")
    timeout_grace_s: float = Field(default=5.0, gt=0, description="Past timeout_s by this much: the process is killed.")
    cancel_memory: int = Field(default=100_000, ge=1, description="Cancelled job ids a worker remembers.")
    control_retention_s: float = Field(default=86_400.0, gt=0, description="How long jobs.control keeps cancels.")
    worker_session_timeout_s: float = Field(
        default=10.0, ge=1, le=300, description="Kafka session timeout of workers: how soon a dead one is replaced."
    )
    plugins: str = Field(default="", description="Extra calculation modules workers import, comma-separated.")
    worker_orphan_grace_s: float = Field(
        default=2.0, gt=0, le=60, description="Graceful stop of a worker whose `jobstream up` died, before it exits."
    )
    tenant_partitions: int = Field(
        default=2, ge=1, le=1000, description="Partitions of jobs.requested one tenant's jobs are spread over."
    )
    priority_partitions: int = Field(
        default=1, ge=0, le=1000, description="Partitions of jobs.requested kept for jobs of priority >= 5 (0: none)."
    )
    worker_partition_read_ahead: int = Field(
        default=250, ge=1, description="Jobs a worker holds per partition before it pauses reading that partition."
    )
    outbox_max_in_flight: int = Field(
        default=4, ge=1, le=100, description="Chunks of job events a worker has sent and Kafka not yet acknowledged."
    )
    worker_fetch_bytes: int = Field(
        default=65_536,
        ge=1024,
        le=100_000_000,
        description="Bytes a worker fetches from one partition at a time (a bigger record still comes whole).",
    )
    worker_fetch_wait_ms: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Longest a worker's fetch waits at the broker for partitions with nothing new (Faust's is 1,500).",
    )
    worker_poll_records: int = Field(
        default=64, ge=1, le=100_000, description="Fetched records a worker takes in at once, from one partition."
    )
    worker_stream_buffer: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Fetched records queued ahead of a worker's intake (a new tenant's job waits behind them).",
    )
    priority_ageing_s: float = Field(
        default=10.0, gt=0, le=86_400, description="Wait after which a held job goes ahead of every younger job."
    )

    # --- SSE gateway ------------------------------------------------------
    sse_heartbeat_s: float = Field(default=15.0, gt=0, description="Comment line interval keeping proxies open.")
    sse_retry_ms: int = Field(default=2000, ge=0, description="`retry:` hint sent to SSE clients.")
    sse_queue_size: int = Field(default=1000, ge=1, description="Events buffered per SSE client before disconnect.")
    sse_history_poll_s: float = Field(
        default=1.0, gt=0, description="How often a stream re-reads history to close gaps."
    )
    sse_max_stream_s: float = Field(default=3600.0, gt=0, description="Longest life of one SSE connection.")
    sse_send_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for one write to an SSE client; past it the client is dropped."
    )
    sse_recent_window_s: float = Field(
        default=10.0, ge=0, description="Seconds of recent events each gateway keeps in memory (the history seam)."
    )
    sse_recent_max_events: int = Field(
        default=100_000, ge=0, description="Most events in the gateway's recent window (memory bound)."
    )
    sse_history_wait_s: float = Field(
        default=30.0, ge=0, description="Longest wait for the sink to cover a stream's history before `reset`."
    )
    sse_catchup_wait_s: float = Field(
        default=5.0, ge=0, description="Longest wait for the gateway's tail to reach the end before a 404."
    )
    sse_resume_max_events: int = Field(
        default=100_000, ge=1, description="Most events a /v1/events resume replays; further behind gets `reset`."
    )
    sse_tail_fetch_bytes: int = Field(
        default=65536,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Bytes the gateway's tail fetches per partition at a time (a bigger record still comes, alone); "
        "it queues at most 16 such fetches: under a flood of one tenant's events another's wait behind that much.",
    )
    bulk_reader_fetch_wait_ms: int = Field(
        default=50,
        ge=0,
        le=10_000,
        description="How long the broker may hold a fetch of the sink, the notifier and the tenant backlog to gather "
        "JOBSTREAM_BULK_READER_FETCH_MIN_BYTES: fewer, fuller fetches under load, at most this much later when quiet.",
    )
    bulk_reader_fetch_min_bytes: int = Field(
        default=65536,
        ge=1,
        le=64 * 1024 * 1024,
        description="Bytes the broker gathers for a fetch of the sink, the notifier or the tenant backlog before it "
        "answers (or the wait passes). 1: answer as soon as anything is new (librdkafka's default).",
    )
    sse_max_connections: int = Field(default=10_000, ge=1, description="Most SSE streams per gateway process (429).")
    sse_max_connections_per_tenant: int = Field(
        default=1_000, ge=1, description="Most SSE streams of one tenant per gateway process (429)."
    )
    sse_rerun_memory_jobs: int = Field(
        default=100_000,
        ge=1,
        description="Jobs whose shown events a gateway remembers to hide re-runs from /v1/events.",
    )
    stream_token_secret: SecretStr | None = Field(
        default=None, description="HMAC key of stream tokens; unset: random per process (set it for >1 process)."
    )
    stream_token_ttl_s: float = Field(default=300.0, gt=0, le=86_400, description="Longest life of a stream token.")
    stream_token_secret_file: Path | None = Field(
        default=None,
        description="Where the generated stream token key is kept (0600) when no secret is set; "
        "unset: <data dir>/stream-token.secret.",
    )
    cors_origins: str = Field(
        default="",
        description="Browser origins (scheme://host[:port], comma-separated) allowed to call the API "
        "and open streams cross-origin; empty: CORS off. `*` is refused.",
    )
    cors_max_age_s: int = Field(default=600, ge=0, le=86_400, description="How long browsers may cache a preflight.")

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("tls_certfile and tls_keyfile: set both (HTTPS) or neither")
        return self

    @field_validator("cors_origins")
    @classmethod
    def _origins_are_exact(cls, value: str) -> str:
        """Only exact origins: a wildcard would let any page use a key it gets hold of, and a path or a
        trailing slash would never match the browser's ``Origin`` header (CORS silently off)."""
        for origin in (o.strip() for o in value.split(",") if o.strip()):
            if "*" in origin:
                raise ValueError("'*' is not allowed: list each origin (scheme://host[:port])")
            parts = urlsplit(origin)
            # .port raises ValueError past 65535
            if (
                parts.port == 0
                or parts.scheme not in ("http", "https")
                or not parts.hostname
                or parts.path
                or parts.query
                or parts.fragment
                or parts.username is not None
                or origin != f"{parts.scheme}://{parts.netloc}"
            ):
                raise ValueError(f"{origin!r} is not an origin; expected scheme://host[:port] without a path")
        return value

    def cors_origin_list(self) -> list[str]:
        """The CORS allow-list (empty: CORS off)."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    # --- sink ---------------------------------------------------------------
    sink_batch_max_size: int = Field(
        default=50_000, ge=1, description="Most events per ClickHouse insert (large inserts are cheap per row)."
    )
    sink_batch_max_wait_ms: int = Field(default=200, ge=1, description="Longest wait to fill a sink batch.")
    sink_retry_max_s: float = Field(
        default=10.0, gt=0, description="Longest backoff between the sink's ClickHouse retries."
    )
    sink_job_times_cache: int = Field(
        default=100_000, ge=0, description="Jobs in flight whose submit/start times the sink keeps to time outcomes."
    )
    events_ttl_days: int = Field(
        default=0, ge=0, description="Days job_events rows are kept (0: forever); applied at sink start-up."
    )
    sink_instance_id: str | None = Field(
        default=None,
        max_length=200,
        description="The sink's Kafka group.instance.id (static membership: a restart "
        "resumes at once); unset: host name + data dir; empty: dynamic membership.",
    )

    # --- telemetry ----------------------------------------------------------
    log_format: Literal["text", "json"] = Field(
        default="text", description="Log lines as text, or one JSON object per line (job_id, tenant, trace_id)."
    )

    # --- replay -------------------------------------------------------------
    replay_default_rate: float = Field(default=100.0, gt=0, description="Jobs/s a replay emits unless told otherwise.")
    replay_max_rate: float = Field(default=10_000.0, gt=0, description="Highest --rate a replay may ask for.")
    replay_max_jobs: int = Field(default=1_000_000, ge=1, description="Most jobs one replay may select.")
    replay_checkpoint_jobs: int = Field(
        default=200, ge=1, le=100_000, description="A replay records its position after every this many jobs."
    )

    # --- dead letters -----------------------------------------------------------
    dead_letter_tenants: str = Field(
        default="",
        description="Tenants (comma-separated) that see and re-drive every tenant's dead letters (and those whose "
        "tenant cannot be read) when API keys are set; others see their own only.",
    )
    dead_letters_max_kept: int = Field(
        default=100_000, ge=1, description="Dead letters each API process indexes in memory (the oldest forgotten)."
    )

    # --- SQL for analysts -----------------------------------------------------
    sql_tenants: str = Field(
        default="", description="Tenants (comma-separated) allowed to use POST /v1/sql when API keys are set."
    )
    sql_max_rows: int = Field(default=10_000, ge=1, description="Most rows one analyst query may return.")
    sql_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Most bytes one analyst query may return."
    )
    sql_max_execution_s: float = Field(default=30.0, gt=0, description="Longest run of one analyst query.")
    sql_clickhouse_user: str | None = Field(
        default=None,
        min_length=1,
        description="ClickHouse server user that analysts' SQL runs as (SELECT on jobstream's database only; "
        "docker/clickhouse/analyst.sh). Unset: CLICKHOUSE_URL's user. Not for chDB.",
    )
    sql_clickhouse_password: SecretStr | None = Field(
        default=None, description="Password of JOBSTREAM_SQL_CLICKHOUSE_USER."
    )
    stats_series_max_buckets: int = Field(
        default=1440, ge=1, le=100_000, description="Most buckets one GET /v1/stats/series may answer (since / step)."
    )

    # --- metrics ----------------------------------------------------------------
    metrics: bool = Field(
        default=True,
        description="Serve GET /metrics (Prometheus text) and, under `jobstream up`, collect the workers' and "
        "calculation processes' metrics there; false: no endpoint, no HTTP middleware, no metric files, "
        "nothing recorded per job.",
    )
    metrics_tenant_label: bool = Field(
        default=False,
        description="Also count accepted and finished jobs per tenant (jobstream_tenant_* families).",
    )
    metrics_max_tenants: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Distinct tenant label values one process reports; tenants past this are counted as 'other'.",
    )
    worker_metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="`jobstream worker` serves its own GET /metrics on this port (the distributed layout); "
        "0: none (under `jobstream up` the API's /metrics covers the workers).",
    )

    # --- webhooks (notifier) ------------------------------------------------------
    webhook_allow_private: bool = Field(
        default=False,
        description="Allow webhook URLs over http and to loopback/private/link-local addresses "
        "(`jobstream up` without API keys turns it on).",
    )
    webhook_max_url_length: int = Field(
        default=2048, ge=16, le=65_536, description="Longest webhook URL (422 past it)."
    )
    webhook_max_events: int = Field(
        default=6, ge=1, le=6, description="Most entries in a submission's webhook_events (422 past it)."
    )
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=300, description="Longest wait for a receiver's answer.")
    webhook_concurrency_per_endpoint: int = Field(
        default=4, ge=1, le=1000, description="Deliveries in flight at once to one scheme://host:port per notifier."
    )
    webhook_endpoint_queue: int = Field(
        default=100,
        ge=0,
        description="Deliveries waiting for one endpoint per notifier; past it they are deferred to the retry topic.",
    )
    webhook_retry_horizon_s: float = Field(
        default=86_400.0, gt=0, description="How long a failing delivery is retried before it is recorded failed."
    )
    webhook_backoff_s: float = Field(default=1.0, gt=0, description="First retry delay; doubles per attempt, jittered.")
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0, description="Longest delay between two attempts.")
    webhook_breaker_failures: int = Field(
        default=5, ge=1, description="Failures in a row after which a host's circuit opens (deliveries deferred)."
    )
    webhook_breaker_open_s: float = Field(default=30.0, gt=0, description="How long an open circuit stays open.")
    webhook_max_in_flight: int = Field(
        default=10_000, ge=1, description="Deliveries a notifier holds (due or scheduled) before it stops reading."
    )
    webhook_response_prefix_bytes: int = Field(
        default=256, ge=0, le=65_536, description="Bytes of a receiver's answer kept in webhook_deliveries."
    )
    webhook_secret_grace_s: float = Field(
        default=86_400.0, ge=0, description="How long the previous secret keeps signing after a rotation."
    )
    webhook_secret_key: SecretStr | None = Field(
        default=None,
        description="Server key tenants' webhook secrets are derived from (HMAC); unset: kept in "
        "JOBSTREAM_WEBHOOK_SECRET_KEY_FILE. Set it (same value) on the API and notifier when they run apart.",
    )
    webhook_secret_key_file: Path | None = Field(
        default=None,
        description="Where the generated webhook key is kept (0600) when no key is set; unset: "
        "<data dir>/webhook-secret.key.",
    )
    webhook_session_timeout_s: float = Field(
        default=10.0, ge=1, le=300, description="Kafka session timeout of notifiers: how soon a dead one is replaced."
    )

    def bulk_reader_fetch(self) -> dict[str, int]:
        """librdkafka settings of readers that take every event and are not waited on by a client."""
        return {
            "fetch.wait.max.ms": self.bulk_reader_fetch_wait_ms,
            "fetch.min.bytes": self.bulk_reader_fetch_min_bytes,
        }

    def topic(self, name: str) -> str:
        """The real topic name for a logical one, with the configured prefix."""
        return f"{self.topic_prefix}{name}"

    @classmethod
    def env_names(cls) -> set[str]:
        """Every environment variable name Settings reads (for the compose test and the README)."""
        names: set[str] = set()
        for name, field in cls.model_fields.items():
            choices = getattr(field.validation_alias, "choices", None)
            names.update(choices if choices else [f"JOBSTREAM_{name.upper()}"])
        return names

    def env(self) -> dict[str, str]:
        """These settings as environment variables, so a child process (``jobstream worker``) reads the
        same values. Unset fields and secrets are left out: a child takes those from what it inherits."""
        env: dict[str, str] = {}
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None or isinstance(value, SecretStr):
                continue
            choices = getattr(field.validation_alias, "choices", None)
            text = to_json(value, exclude_none=True).decode() if isinstance(value, dict) else str(value)
            env[choices[0] if choices else f"JOBSTREAM_{name.upper()}"] = text
        return env
