"""Every Prometheus metric jobstream exports, defined once; services record into them at their choke points.

Names follow Prometheus conventions (``jobstream_`` prefix, ``_total`` counters, ``_seconds`` base
units); the README's "Metrics" section lists each family with its meaning. Labels are bounded:
routes are templates, kinds are registered calculations (anything else is ``other``), statuses
and reasons are enums, never a job id; tenants only in the opt-in ``jobstream_tenant_*`` families,
capped at ``JOBSTREAM_METRICS_MAX_TENANTS`` values per process.

Multiprocess mode (``telemetry.multiprocess``) is chosen by prometheus-client when this module is
first imported; ``render`` then adds up every process's files, otherwise it reads this process.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import multiprocess as _mp
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

from calculations import registry
from telemetry.multiprocess import directory, reap_dead

# Every name and label here is a classic Prometheus name: the 0.0.4 text format, which every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
_FAST_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

# --- HTTP edge (edge/metrics.py) ---------------------------------------------------------------
# One histogram, no separate request counter: its _count is the requests by route and status, and each
# write costs ~1 µs in multiprocess mode (docs/benchmarks.md, "Metrics").
HTTP_DURATION = Histogram(
    "jobstream_http_request_duration_seconds",
    "HTTP requests answered (_count) and the time from arrival to response headers (a stream's lifetime "
    "is not counted), by route template and status.",
    ["method", "route", "status"],
    buckets=_FAST_SECONDS,
)

# --- ingest API --------------------------------------------------------------------------------
SUBMISSIONS_ACCEPTED = Counter(
    "jobstream_submissions_accepted_total", "Jobs accepted (Kafka acknowledged them).", ["route", "kind"]
)
SUBMISSIONS_REJECTED = Counter(
    "jobstream_submissions_rejected_total",
    "Submissions refused, by HTTP status (a batch's invalid items count one each, as 422).",
    ["route", "kind", "status"],
)
TENANT_SUBMISSIONS_ACCEPTED = Counter(
    "jobstream_tenant_submissions_accepted_total",
    "Jobs accepted per tenant (only with JOBSTREAM_METRICS_TENANT_LABEL=true).",
    ["tenant"],
)
SUBMISSIONS_THROTTLED = Counter(
    "jobstream_submissions_throttled_total",
    "Submits refused with 429 by a tenant's own limit: reason queue (its waiting jobs at its cap) or rate.",
    ["reason"],
)
TENANT_SUBMISSIONS_THROTTLED = Counter(
    "jobstream_tenant_submissions_throttled_total",
    "Submits refused by a tenant's own limit, per tenant (only with JOBSTREAM_METRICS_TENANT_LABEL=true).",
    ["tenant", "reason"],
)
TENANT_WAITING = Gauge(
    "jobstream_tenant_waiting_jobs",
    "Jobs of a tenant queued and not started yet, as an API process counts them (replays not counted; "
    "only with JOBSTREAM_METRICS_TENANT_LABEL=true).",
    ["tenant"],
    multiprocess_mode="livemax",
)
WAITING = Gauge(
    "jobstream_waiting_jobs",
    "Jobs queued and not started yet, every tenant's, as an API process counts them (replays not counted).",
    multiprocess_mode="livemax",
)
PROCESSOR_LAG = Gauge(
    "jobstream_processor_lag_jobs",
    "Jobs waiting on jobs.requested: records the processors' group has not committed.",
    ["group", "partition"],
    multiprocess_mode="livemostrecent",
)
OLDEST_WAITING = Gauge(
    "jobstream_processor_oldest_waiting_seconds",
    "Age of the oldest job not yet committed by the processors, per partition (0: none waiting).",
    ["group", "partition"],
    multiprocess_mode="livemostrecent",
)

# --- processors ----------------------------------------------------------------------------------
JOBS_FINISHED = Counter(
    "jobstream_jobs_finished_total", "Terminal events emitted, by kind and status.", ["kind", "status"]
)
TENANT_JOBS_FINISHED = Counter(
    "jobstream_tenant_jobs_finished_total",
    "Terminal events per tenant (only with JOBSTREAM_METRICS_TENANT_LABEL=true).",
    ["tenant", "status"],
)
RETRIES = Counter("jobstream_job_retries_total", "Attempts scheduled again after a transient failure.", ["kind"])
DEAD_LETTERS = Counter(
    "jobstream_dead_letters_total", "Requests sent to jobs.dead-letters (undecodable, crashed).", ["reason"]
)
CALC_CRASHES = Counter(
    "jobstream_calc_process_crashes_total",
    "Calculation processes that died unexpectedly (not killed for a timeout, not at shutdown).",
)
CANCELLATIONS = Counter(
    "jobstream_job_cancellations_total", "Jobs cancelled, while waiting or while running.", ["kind", "stage"]
)
TIMEOUTS = Counter("jobstream_job_timeouts_total", "Jobs failed because timeout_s passed.", ["kind"])
EXPIRED = Counter(
    "jobstream_jobs_expired_total", "Jobs failed unrun because start_within_s passed before they started.", ["kind"]
)
QUEUE_WAIT = Histogram(
    "jobstream_job_queue_wait_seconds", "From submit to the job's first start on a worker.", ["kind"], buckets=_SECONDS
)
JOB_LATENCY = Histogram(
    "jobstream_job_latency_seconds",
    "End to end: from submit to the terminal event (any status).",
    ["kind"],
    buckets=_SECONDS,
)
BATCH_RUN = Histogram(
    "jobstream_batch_run_seconds",
    "Run time of one batch in a calculation process (each job in it ran that long).",
    ["kind"],
    buckets=_SECONDS,
)
BATCH_SIZE = Histogram("jobstream_batch_size", "Jobs per batch run by a calculation process.", ["kind"], buckets=_SIZES)

# --- SSE gateway ---------------------------------------------------------------------------------
SSE_OPEN = Gauge(
    "jobstream_sse_open_streams", "Event streams open now, by endpoint.", ["endpoint"], multiprocess_mode="livesum"
)
SSE_EVENTS = Counter("jobstream_sse_events_delivered_total", "Events written to SSE streams.", ["endpoint"])
SSE_SLOW_DROPPED = Counter(
    "jobstream_sse_slow_clients_dropped_total",
    "Streams closed because the client read too slowly (queue_full, send_timeout).",
    ["reason"],
)
SSE_RESUMES = Counter("jobstream_sse_resumes_total", "Streams opened with Last-Event-ID (reconnects).", ["endpoint"])
SSE_RESETS = Counter(
    "jobstream_sse_resets_total", "'event: reset' sent: the events asked for cannot all be replayed.", ["endpoint"]
)

# --- sink ------------------------------------------------------------------------------------------
SINK_ROWS = Counter("jobstream_sink_rows_inserted_total", "Event rows inserted into ClickHouse.")
SINK_INSERT_DURATION = Histogram(
    "jobstream_sink_insert_duration_seconds", "Duration of one batch insert into ClickHouse.", buckets=_FAST_SECONDS
)
SINK_LAG = Histogram(
    "jobstream_sink_lag_seconds",
    "From an event's append to Kafka until ClickHouse has it (the oldest event of each batch).",
    buckets=_SECONDS,
)
SINK_FAILURES = Counter("jobstream_sink_insert_failures_total", "Batch inserts into ClickHouse that failed.")

# --- Kafka producers and replays -------------------------------------------------------------------
PRODUCE_TIMEOUTS = Counter(
    "jobstream_kafka_produce_timeouts_total",
    "Sends (one flush of records) Kafka did not acknowledge within the produce timeout.",
)
PRODUCE_ERRORS = Counter(
    "jobstream_kafka_produce_errors_total", "Sends Kafka refused or failed to store (queue full, too large...)."
)
REPLAYS_RUNNING = Gauge("jobstream_replays_in_progress", "Replays emitting jobs now.", multiprocess_mode="livesum")
REPLAY_EMITTED = Counter("jobstream_replay_jobs_emitted_total", "Jobs re-emitted by replays.")


# --- bounded label values --------------------------------------------------------------------------
OTHER = "other"
_MAX_KINDS = 1000
_kinds: dict[str, str] = {}


def kind_label(kind: str) -> str:
    """``kind`` if it is a registered calculation, else ``other``: a request cannot invent label values."""
    label = _kinds.get(kind)
    if label is None:
        try:
            registry.get(kind)
            label = kind
        except (registry.UnknownKind, registry.UnknownVersion):
            label = OTHER
        if len(_kinds) < _MAX_KINDS:
            _kinds[kind] = label
    return label


class TenantLabels:
    """Per-tenant counting, off unless ``JOBSTREAM_METRICS_TENANT_LABEL``; the first
    ``JOBSTREAM_METRICS_MAX_TENANTS`` tenants keep their name, later ones count as ``other``."""

    def __init__(self, enabled: bool = False, limit: int = 100) -> None:
        self.enabled = enabled
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self.waiting_labels: set[str] = set()  # tenants whose waiting gauge is set (reset to 0 once none wait)

    def label(self, tenant: str) -> str:
        if tenant in self._seen:
            return tenant
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(tenant)
                return tenant
        return OTHER


tenants = TenantLabels()
_recording = True


def configure(tenant_label: bool, max_tenants: int, recording: bool = True) -> None:
    """Apply JOBSTREAM_METRICS_TENANT_LABEL and JOBSTREAM_METRICS_MAX_TENANTS to this process.
    ``recording=False``: nothing can read this process's values (no endpoint, no multiprocess
    directory), so the per-job helpers skip their clock reads and writes."""
    global tenants, _recording
    tenants = TenantLabels(tenant_label, max_tenants)
    _recording = recording


def recording() -> bool:
    """Whether per-job values are recorded here (see ``configure``)."""
    return _recording


def readable_here(port: int) -> bool:
    """Whether a scrape can see this process's values: it serves them (``port``) or writes them to
    the multiprocess directory another process serves."""
    return bool(port) or directory() is not None


# --- recording helpers used on hot paths -----------------------------------------------------------
_accepted: dict[tuple[str, str], Any] = {}


def accepted(route: str, kind: str, tenant: str, count: int = 1) -> None:
    if not _recording:
        return
    child = _accepted.get((route, kind))
    if child is None:
        child = SUBMISSIONS_ACCEPTED.labels(route, kind_label(kind))
        if len(_accepted) < _MAX_KINDS:
            _accepted[(route, kind)] = child
    child.inc(count)
    if tenants.enabled:
        TENANT_SUBMISSIONS_ACCEPTED.labels(tenants.label(tenant)).inc(count)


_throttled: dict[str, Any] = {}


def throttled(tenant: str, reason: str) -> None:
    """A 429 from a tenant's own limit (``ingest_api.admission``)."""
    child = _throttled.get(reason)
    if child is None:
        child = _throttled[reason] = SUBMISSIONS_THROTTLED.labels(reason)
    child.inc()
    if tenants.enabled:
        TENANT_SUBMISSIONS_THROTTLED.labels(tenants.label(tenant), reason).inc()


def waiting(by_tenant: dict[str, int]) -> None:
    """The waiting jobs an API process counts (each second, from ``streams.backlog``'s thread)."""
    WAITING.set(sum(by_tenant.values()))
    if tenants.enabled:
        labelled: dict[str, int] = {}
        for tenant, n in by_tenant.items():
            label = tenants.label(tenant)
            labelled[label] = labelled.get(label, 0) + n
        for label in tenants.waiting_labels - labelled.keys():
            TENANT_WAITING.labels(label).set(0)
        for label, n in labelled.items():
            TENANT_WAITING.labels(label).set(n)
        tenants.waiting_labels = set(labelled)


def rejected(route: str, kind: str | None, status: int, count: int = 1) -> None:
    if not _recording:
        return
    SUBMISSIONS_REJECTED.labels(route, "unknown" if kind is None else kind_label(kind), str(status)).inc(count)


_finished: dict[tuple[str, str], tuple[Any, Any]] = {}
_waits: dict[str, Any] = {}
_batches: dict[str, tuple[Any, Any]] = {}


class Tally:
    """Per-job values of a worker's loop or a calculation process, summed in memory and written in
    one go by ``flush``.

    In multiprocess mode every ``inc``/``observe`` takes a lock and writes to a memory-mapped file
    (~1.5 µs each, five per job in the worker; a calculation process's two per batch cost ~9 µs);
    summed here a job costs a dict lookup and a bisect, and a flush writes each touched bucket
    once. Values reach a scrape at the next flush (the runner flushes every ``FLUSH_S`` and when it
    stops; a calculation process when it has been idle or has not flushed for ``FLUSH_S``).
    Not thread-safe: one thread per process uses it.
    """

    def __init__(self) -> None:
        self._counts: dict[Any, float] = {}
        self._histograms: dict[Any, tuple[list[float], list[int]]] = {}

    def __bool__(self) -> bool:
        """Whether anything waits for a flush."""
        return bool(self._counts or self._histograms)

    def inc(self, child: Any, amount: float = 1.0) -> None:
        self._counts[child] = self._counts.get(child, 0.0) + amount

    def observe(self, child: Any, amount: float) -> None:
        pending = self._histograms.get(child)
        if pending is None:
            pending = self._histograms[child] = ([0.0], [0] * len(child._upper_bounds))
        pending[0][0] += amount
        pending[1][bisect_left(child._upper_bounds, amount)] += 1  # the first bound >= amount, as observe

    def flush(self) -> None:
        counts, histograms = self._counts, self._histograms
        self._counts, self._histograms = {}, {}
        for child, amount in counts.items():
            child.inc(amount)
        for child, (total, buckets) in histograms.items():
            child._sum.inc(total[0])  # prometheus_client 0.x internals; tests/test_metrics.py pins them
            for i, n in enumerate(buckets):
                if n:
                    child._buckets[i].inc(n)


FLUSH_S = 1.0  #: how often the worker writes its tallied per-job values
tally = Tally()


def flush() -> None:
    tally.flush()


def finished(kind: str, status: str, tenant: str, latency_s: float) -> None:
    """A terminal event: counted by kind and status, its end-to-end latency observed (tallied)."""
    children = _finished.get((kind, status))
    if children is None:
        label = kind_label(kind)
        children = (JOBS_FINISHED.labels(label, status), JOB_LATENCY.labels(label))
        if len(_finished) < _MAX_KINDS:
            _finished[(kind, status)] = children
    tally.inc(children[0])
    tally.observe(children[1], latency_s)
    if tenants.enabled:
        TENANT_JOBS_FINISHED.labels(tenants.label(tenant), status).inc()


def queue_wait(kind: str, seconds: float) -> None:
    child = _waits.get(kind)
    if child is None:
        child = QUEUE_WAIT.labels(kind_label(kind))
        if len(_waits) < _MAX_KINDS:
            _waits[kind] = child
    tally.observe(child, seconds)


def batch(kind: str, run_s: float, size: int) -> None:
    """A batch run by a calculation process: its run time and size (label children cached; tallied)."""
    children = _batches.get(kind)
    if children is None:
        label = kind_label(kind)
        children = (BATCH_RUN.labels(label), BATCH_SIZE.labels(label))
        if len(_batches) < _MAX_KINDS:
            _batches[kind] = children
    tally.observe(children[0], run_s)
    tally.observe(children[1], size)


# --- exposition ------------------------------------------------------------------------------------
class _Aggregate(_mp.MultiProcessCollector):
    """Every process's files, after dropping the live gauges of processes that are gone."""

    def __init__(self, registry: CollectorRegistry, path: Path) -> None:
        super().__init__(registry, str(path))
        self._dir = path

    def collect(self) -> Iterable[Metric]:
        reap_dead(self._dir)
        return super().collect()


_aggregate: CollectorRegistry | None = None


def exposition_registry() -> CollectorRegistry:
    """What a scrape reads: the sum over the multiprocess directory, or this process's registry."""
    global _aggregate
    path = directory()
    if path is None:
        return REGISTRY
    if _aggregate is None:
        aggregate = CollectorRegistry(auto_describe=False)
        _Aggregate(aggregate, path)
        _aggregate = aggregate
    return _aggregate


def render() -> bytes:
    """The Prometheus text exposition of every metric this scrape covers."""
    return generate_latest(exposition_registry())


def serve(port: int, host: str = "0.0.0.0") -> None:
    """``GET /metrics`` on ``port`` from a background thread (a worker has no HTTP server of its own)."""
    from prometheus_client import start_http_server

    start_http_server(port, addr=host, registry=exposition_registry())
