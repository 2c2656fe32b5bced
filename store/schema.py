"""Versioned ClickHouse migrations, applied in order exactly once at start-up.

``schema_migrations`` records which versions ran; a shipped version is never edited (a change
is a new version), and statements say ``IF NOT EXISTS`` so an interrupted or concurrent run can
simply run again. Every table or view an analyst is pointed to counts a job once, with the run
its clients saw (processors are at-least-once), so nothing countable is pre-aggregated per
insert block; the README's "Querying results" lists every table and view and why.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Insert dedup window: a retried insert with the same insert_deduplication_token is dropped.
DEDUP_WINDOW = 10_000
_DEDUP = f"SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}"

TERMINAL_TYPES = "('succeeded', 'failed', 'cancelled')"
QUANTILES = "0.5, 0.9, 0.99"
_TS = "DateTime64(3, 'UTC')"
_NTS = f"Nullable({_TS})"

# The status an event moves a job to, and its rank: the first terminal event wins
# (as in JobView.fold), otherwise the latest event by seq.
_STATUS = "toLowCardinality(multiIf(type IN ('running', 'progress', 'retrying'), 'running', type))"
_RANK = f"toUInt64(if(type IN {TERMINAL_TYPES}, 8589934592 - toInt64(seq), toInt64(seq)))"


def _ms(column: str) -> str:
    return f"toUnixTimestamp64Milli({column})"


def _durations(submitted: str, started: str, finished: str) -> str:
    return (
        f"({_ms(started)} - {_ms(submitted)}) / 1000 AS queue_wait_s, "
        f"({_ms(finished)} - {_ms(started)}) / 1000 AS run_s, "
        f"({_ms(finished)} - {_ms(submitted)}) / 1000 AS total_s"
    )


_ATTEMPTS = "toUInt16(if(JSONHas(data, 'attempt'), JSONExtractUInt(data, 'attempt'), 1))"

# Results and outcomes come from the same insert as the events (terminal events carry the
# job's submitted_at/started_at, filled in by the sink), so a batch is ONE insert and one token.
_RESULTS_SELECT = f"""
    SELECT tenant, job_id, JSONExtractString(data, 'calc_version') AS calc_version, kind,
        JSONExtractRaw(data, 'result') AS result, ts AS finished_at, {_ATTEMPTS} AS attempts,
        submitted_at, started_at, {_durations("submitted_at", "started_at", "ts")}
    FROM job_events
    WHERE type = 'succeeded'
"""

_OUTCOMES_SELECT = f"""
    SELECT tenant, job_id, kind, type AS status, JSONExtractString(data, 'calc_version') AS calc_version,
        JSONExtractString(data, 'error', 'type') AS error_type, {_ATTEMPTS} AS attempts,
        submitted_at, started_at, ts AS finished_at, {_durations("submitted_at", "started_at", "ts")}
    FROM job_events
    WHERE type IN {TERMINAL_TYPES}
"""

# Reads the block of new job_events rows: a job's latest state, merged on read by the view `jobs`.
_JOBS_STATE_SELECT = f"""
    SELECT tenant, job_id,
        any(kind) AS kind,
        argMaxState({_STATUS}, {_RANK}) AS status,
        max(seq) AS last_seq,
        max(if(type = 'progress', JSONExtractFloat(data, 'progress'), 0.0)) AS progress,
        max(toUInt16(JSONExtractUInt(data, 'attempt'))) AS attempts,
        min(if(type = 'queued', ts, NULL)) AS submitted_at,
        min(if(type = 'running', ts, NULL)) AS started_at,
        min(if(type IN {TERMINAL_TYPES}, ts, NULL)) AS finished_at,
        max(ts) AS updated_at,
        max(if(type = 'succeeded', JSONExtractString(data, 'calc_version'), NULL)) AS calc_version,
        max(if(type IN ('failed', 'cancelled'), JSONExtractString(data, 'error', 'type'), NULL)) AS error_type
    FROM job_events
    GROUP BY tenant, job_id
"""

_EVENT_COUNTS_SELECT = """
    SELECT tenant, toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, kind, type, count() AS events
    FROM job_events
    GROUP BY tenant, minute, kind, type
"""

_BATCH_SIZE = "toUInt32(JSONExtractUInt(data, 'batch_size'))"
_BATCH_SIZES_SELECT = f"""
    SELECT tenant, toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, kind,
        count() AS jobs,
        avgState({_BATCH_SIZE}) AS size_avg,
        quantilesState({QUANTILES})({_BATCH_SIZE}) AS size_quantiles,
        max({_BATCH_SIZE}) AS size_max
    FROM job_events
    WHERE type = 'running' AND {_BATCH_SIZE} > 0
    GROUP BY tenant, minute, kind
"""

_OUTCOME_STATS_SELECT = f"""
    SELECT tenant, toStartOfMinute(toDateTime(finished_at, 'UTC')) AS minute, kind, status,
        count() AS jobs,
        quantilesState({QUANTILES})(queue_wait_s) AS queue_wait_s,
        quantilesState({QUANTILES})(run_s) AS run_s,
        quantilesState({QUANTILES})(total_s) AS total_s
    FROM job_outcomes
    GROUP BY tenant, minute, kind, status
"""

# job_outcomes rebuilt from job_events, for databases that had events before version 2.
_OUTCOMES_BACKFILL = f"""
    INSERT INTO job_outcomes
    SELECT tenant, job_id, kind, status, calc_version, error_type, attempts, submitted_at, started_at, finished_at,
        ({_ms("started_at")} - {_ms("submitted_at")}) / 1000,
        ({_ms("finished_at")} - {_ms("started_at")}) / 1000,
        ({_ms("finished_at")} - {_ms("submitted_at")}) / 1000
    FROM (
        SELECT tenant, job_id, any(kind) AS kind,
            argMinIf(type, seq, type IN {TERMINAL_TYPES}) AS status,
            maxIf(JSONExtractString(data, 'calc_version'), type = 'succeeded') AS calc_version,
            argMinIf(JSONExtractString(data, 'error', 'type'), seq, type IN {TERMINAL_TYPES}) AS error_type,
            max(toUInt16(JSONExtractUInt(data, 'attempt'))) AS attempts,
            min(if(type = 'queued', ts, NULL)) AS submitted_at,
            min(if(type = 'running', ts, NULL)) AS started_at,
            minIf(ts, type IN {TERMINAL_TYPES}) AS finished_at
        FROM job_events GROUP BY tenant, job_id HAVING countIf(type IN {TERMINAL_TYPES}) > 0
    )
"""

# A replayed job's queued event names its replay, the job it re-runs and the version it will run.
_REPLAY_JOBS_SELECT = """
    SELECT tenant, JSONExtractString(data, 'replay_id') AS replay_id, JSONExtractString(data, 'replay_of') AS replay_of,
        job_id, JSONExtractString(data, 'calc_version') AS calc_version, ts AS submitted_at
    FROM job_events
    WHERE type = 'queued' AND JSONExtractString(data, 'replay_id') != ''
"""

# Original and replayed result of every job of one replay (a parameterised view):
#   SELECT * FROM replay_diff(tenant = 'acme', replay_id = '...')
# outcome: pending (the re-run has not finished), failed (it failed or was cancelled),
# equal (both succeeded with the same result JSON), changed (anything else).
_REPLAY_DIFF_SELECT = f"""
    WITH
        pairs AS (
            SELECT replay_of AS original_job_id, any(job_id) AS replay_job_id, any(calc_version) AS target_version
            FROM replay_jobs
            WHERE tenant = {{tenant:String}} AND replay_id = {{replay_id:String}}
            GROUP BY replay_of
        ),
        state AS (
            SELECT job_id, argMaxMerge(status) AS status, max(calc_version) AS calc_version,
                max(error_type) AS error_type
            FROM jobs_state
            WHERE tenant = {{tenant:String}}
                AND (job_id IN (SELECT original_job_id FROM pairs) OR job_id IN (SELECT replay_job_id FROM pairs))
            GROUP BY job_id
        ),
        results AS (
            SELECT job_id, argMax(result, finished_at) AS result
            FROM job_results
            WHERE tenant = {{tenant:String}}
                AND (job_id IN (SELECT original_job_id FROM pairs) OR job_id IN (SELECT replay_job_id FROM pairs))
            GROUP BY job_id
        )
    SELECT p.original_job_id AS original_job_id, p.replay_job_id AS replay_job_id,
        o.status AS original_status, r.status AS replay_status,
        ifNull(o.calc_version, '') AS original_version, ifNull(nullIf(r.calc_version, ''), p.target_version) AS replay_version,
        orr.result AS original_result, rr.result AS replay_result,
        multiIf(r.status NOT IN {TERMINAL_TYPES}, 'pending',
                r.status != 'succeeded', 'failed',
                o.status = 'succeeded' AND orr.result = rr.result, 'equal',
                'changed') AS outcome,
        ifNull(r.error_type, '') AS replay_error
    FROM pairs AS p
    LEFT JOIN state AS o ON o.job_id = p.original_job_id
    LEFT JOIN state AS r ON r.job_id = p.replay_job_id
    LEFT JOIN results AS orr ON orr.job_id = p.original_job_id
    LEFT JOIN results AS rr ON rr.job_id = p.replay_job_id
"""

# --- version 4: each job counted once, with the run its clients saw ------------------------------
# A job a processor ran twice (at-least-once) has two terminal events with the same seq; the first
# to reach Kafka is the one the API and SSE show. ``first_wins`` ranks a job's terminal events so
# that the lowest seq, then the lowest Kafka offset (one job = one partition), is the highest value:
# ReplacingMergeTree keeps it, argMax picks it. Offsets past 2**32 saturate (then ties: either).
FIRST_WINS = (
    "bitOr(bitShiftLeft(toUInt64(2147483647 - least(seq, 2147483647)), 32), "
    "toUInt64(4294967295 - least(kafka_offset, 4294967295)))"
)
_STATUS_RANK_V4 = f"if(type IN {TERMINAL_TYPES}, bitOr(toUInt64(9223372036854775808), {FIRST_WINS}), toUInt64(seq))"

_STORE_COLUMNS = (
    "tenant, job_id, kind, status, calc_version, error_type, attempts, result, submitted_at, started_at, "
    "finished_at, queue_wait_s, run_s, total_s, kafka_partition, kafka_offset, first_wins"
)


# Every terminal event, keyed by job: the store behind the views job_outcomes and job_results.
def _terminals_select(submitted: str = "submitted_at", started: str = "started_at", source: str = "job_events") -> str:
    return f"""
    SELECT tenant, job_id, kind, type AS status, JSONExtractString(data, 'calc_version') AS calc_version,
        JSONExtractString(data, 'error', 'type') AS error_type, {_ATTEMPTS} AS attempts,
        if(type = 'succeeded', JSONExtractRaw(data, 'result'), '') AS result,
        {submitted}, {started}, ts AS finished_at, {_durations(submitted, started, "ts")},
        kafka_partition, kafka_offset, {FIRST_WINS} AS first_wins
    FROM {source}
    WHERE type IN {TERMINAL_TYPES}
"""


_TERMINALS_SELECT = _terminals_select()

# The backfill: events stored before version 2 carry no times of their own; take their job's.
_TERMINALS_BACKFILL = f"INSERT INTO job_outcomes_store ({_STORE_COLUMNS}) " + _terminals_select(
    "ifNull(submitted_at, job_submitted_at)",
    "ifNull(started_at, job_started_at)",
    "job_events LEFT JOIN (SELECT tenant, job_id, min(if(type = 'queued', ts, NULL)) AS job_submitted_at, "
    "min(if(type = 'running', ts, NULL)) AS job_started_at FROM job_events GROUP BY tenant, job_id) AS times "
    "USING (tenant, job_id)",
)

_OUTCOME_COLUMNS = (
    "tenant, job_id, kind, status, calc_version, error_type, attempts, submitted_at, started_at, "
    "finished_at, queue_wait_s, run_s, total_s"
)
_RESULT_COLUMNS = (
    "tenant, job_id, calc_version, kind, result, finished_at, attempts, submitted_at, started_at, "
    "queue_wait_s, run_s, total_s"
)

# What version 2/3 databases already hold, first run (earliest finish) per job, below any event's rank:
# rows whose events are still in job_events are replaced by the event-derived ones.
_TERMINALS_FROM_OLD_TABLES = """
    INSERT INTO job_outcomes_store
    SELECT o.tenant, o.job_id, o.kind, o.status, o.calc_version, o.error_type, o.attempts, r.result,
        o.submitted_at, o.started_at, o.finished_at, o.queue_wait_s, o.run_s, o.total_s, 0, 0, 0
    FROM (SELECT * FROM job_outcomes ORDER BY tenant, job_id, finished_at LIMIT 1 BY tenant, job_id) AS o
    LEFT JOIN (SELECT tenant, job_id, result FROM job_results ORDER BY tenant, job_id, finished_at
               LIMIT 1 BY tenant, job_id) AS r
    ON o.tenant = r.tenant AND o.job_id = r.job_id
"""

# The first `running` event of each job (the start clients saw): batch sizes count each job once.
_FIRST_RUNS = f"""
    SELECT tenant, job_id, any(kind) AS kind, min(ts) AS started_at,
        argMin({_BATCH_SIZE}, kafka_offset) AS batch_size
    FROM job_events
    WHERE type = 'running'
    GROUP BY tenant, job_id
"""

# The same for one tenant, for GET /v1/stats (a query parameter `tenant`).
FIRST_RUNS_OF_TENANT = _FIRST_RUNS.replace(
    "WHERE type = 'running'", "WHERE type = 'running' AND tenant = {tenant:String}"
)

# Of the rows stored for one (job, seq), the first to reach Kafka: (type, kind, ts, data, schema_version,
# kafka_partition, kafka_offset). A re-run's terminal event shares the first run's seq.
FIRST_OF_SEQ = (
    "argMin((type, kind, ts, data, schema_version, kafka_partition, kafka_offset), (kafka_offset, kafka_partition))"
)


def visible_events(where: str = "1") -> str:
    """The events (of ``job_events`` rows matching ``where``) that a job's SSE stream shows, with the
    rules of ``sse_gateway/visibility.py``: one per seq (the first to reach Kafka), in Kafka order
    nothing after the first terminal event but ``queued``, and a ``running``/``retrying`` only of a
    higher attempt, a ``progress`` only above every earlier one."""
    return f"""
    SELECT tenant, job_id, seq, type, kind, ts, data, schema_version, kafka_partition, kafka_offset FROM (
        SELECT *,
            count() OVER earlier AS n_before,
            sum(type IN {TERMINAL_TYPES}) OVER earlier AS terminals_before,
            max(if(type = 'running', attempt, 0)) OVER earlier AS running_before,
            max(if(type = 'retrying', attempt, 0)) OVER earlier AS retrying_before,
            max(if(type = 'progress', progress, -1.0)) OVER earlier AS progress_before
        FROM (
            SELECT tenant, job_id, seq, first.1 AS type, first.2 AS kind, first.3 AS ts, first.4 AS data,
                first.5 AS schema_version, first.6 AS kafka_partition, first.7 AS kafka_offset,
                greatest(toUInt32(JSONExtractUInt(first.4, 'attempt')), 1) AS attempt,
                JSONExtractFloat(first.4, 'progress') AS progress
            FROM (SELECT tenant, job_id, seq, {FIRST_OF_SEQ} AS first FROM job_events WHERE {where}
                  GROUP BY tenant, job_id, seq)
        )
        WINDOW earlier AS (PARTITION BY tenant, job_id ORDER BY kafka_partition, kafka_offset
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
    )
    WHERE type = 'queued' OR (terminals_before = 0 AND multiIf(
        type = 'running', attempt > running_before,
        type = 'retrying', attempt > retrying_before,
        type = 'progress', progress > if(n_before = 0, -1.0, progress_before),
        1))
"""


MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "job events and results",
        [
            f"""
            CREATE TABLE IF NOT EXISTS job_events (
                tenant LowCardinality(String),
                job_id String,
                seq UInt32,
                type LowCardinality(String),
                kind LowCardinality(String),
                ts DateTime64(3, 'UTC'),
                data String,
                schema_version UInt16,
                kafka_partition UInt32,
                kafka_offset UInt64
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(ts)
            ORDER BY (tenant, job_id, seq)
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
            f"""
            CREATE TABLE IF NOT EXISTS job_results (
                tenant LowCardinality(String),
                job_id String,
                calc_version LowCardinality(String),
                kind LowCardinality(String),
                result String,
                finished_at DateTime64(3, 'UTC'),
                attempts UInt16
            ) ENGINE = ReplacingMergeTree(finished_at)
            ORDER BY (tenant, job_id, calc_version)
            SETTINGS non_replicated_deduplication_window = {DEDUP_WINDOW}
            """,
        ],
    ),
    (
        2,
        "job state, outcomes with timings, per-minute analytics",
        [
            # --- terminal events carry their job's submit and start times (set by the sink) ---
            f"""
            ALTER TABLE job_events
                ADD COLUMN IF NOT EXISTS submitted_at {_NTS},
                ADD COLUMN IF NOT EXISTS started_at {_NTS}
            """,
            # --- results get typed timings -------------------------------------
            f"""
            ALTER TABLE job_results
                ADD COLUMN IF NOT EXISTS submitted_at {_NTS},
                ADD COLUMN IF NOT EXISTS started_at {_NTS},
                ADD COLUMN IF NOT EXISTS queue_wait_s Nullable(Float64),
                ADD COLUMN IF NOT EXISTS run_s Nullable(Float64),
                ADD COLUMN IF NOT EXISTS total_s Nullable(Float64)
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS job_results_mv TO job_results AS {_RESULTS_SELECT}",
            # --- one row per finished job ----------------------------------------------
            f"""
            CREATE TABLE IF NOT EXISTS job_outcomes (
                tenant LowCardinality(String),
                job_id String,
                kind LowCardinality(String),
                status LowCardinality(String),
                calc_version LowCardinality(String),
                error_type LowCardinality(String),
                attempts UInt16,
                submitted_at {_NTS},
                started_at {_NTS},
                finished_at {_TS},
                queue_wait_s Nullable(Float64),
                run_s Nullable(Float64),
                total_s Nullable(Float64)
            ) ENGINE = MergeTree
            PARTITION BY toYYYYMM(finished_at)
            ORDER BY (tenant, kind, finished_at, job_id)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS job_outcomes_mv TO job_outcomes AS {_OUTCOMES_SELECT}",
            # --- latest state per job -------------------------------------------
            f"""
            CREATE TABLE IF NOT EXISTS jobs_state (
                tenant LowCardinality(String),
                job_id String,
                kind SimpleAggregateFunction(any, LowCardinality(String)),
                status AggregateFunction(argMax, LowCardinality(String), UInt64),
                last_seq SimpleAggregateFunction(max, UInt32),
                progress SimpleAggregateFunction(max, Float64),
                attempts SimpleAggregateFunction(max, UInt16),
                submitted_at SimpleAggregateFunction(min, {_NTS}),
                started_at SimpleAggregateFunction(min, {_NTS}),
                finished_at SimpleAggregateFunction(min, {_NTS}),
                updated_at SimpleAggregateFunction(max, {_TS}),
                calc_version SimpleAggregateFunction(max, Nullable(String)),
                error_type SimpleAggregateFunction(max, Nullable(String))
            ) ENGINE = AggregatingMergeTree
            ORDER BY (tenant, job_id)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS jobs_state_mv TO jobs_state AS {_JOBS_STATE_SELECT}",
            f"""
            CREATE VIEW IF NOT EXISTS jobs AS
            SELECT tenant, job_id, kind_ AS kind, status_ AS status, last_seq_ AS last_seq,
                if(status_ = 'succeeded', 1.0, progress_) AS progress,
                attempts_ AS attempts, submitted_at_ AS submitted_at, started_at_ AS started_at,
                finished_at_ AS finished_at, updated_at_ AS updated_at, calc_version_ AS calc_version,
                error_type_ AS error_type,
                ({_ms("started_at_")} - {_ms("submitted_at_")}) / 1000 AS queue_wait_s,
                ({_ms("finished_at_")} - {_ms("started_at_")}) / 1000 AS run_s,
                ({_ms("finished_at_")} - {_ms("submitted_at_")}) / 1000 AS total_s
            FROM (
                SELECT tenant, job_id, any(kind) AS kind_, argMaxMerge(status) AS status_,
                    max(last_seq) AS last_seq_, max(progress) AS progress_, max(attempts) AS attempts_,
                    min(submitted_at) AS submitted_at_, min(started_at) AS started_at_,
                    min(finished_at) AS finished_at_, max(updated_at) AS updated_at_,
                    max(calc_version) AS calc_version_, max(error_type) AS error_type_
                FROM jobs_state
                GROUP BY tenant, job_id
            )
            """,
            # --- events per minute by kind and type -------------------------------
            f"""
            CREATE TABLE IF NOT EXISTS event_counts_state (
                tenant LowCardinality(String),
                minute DateTime('UTC'),
                kind LowCardinality(String),
                type LowCardinality(String),
                events SimpleAggregateFunction(sum, UInt64)
            ) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMM(minute)
            ORDER BY (tenant, minute, kind, type)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS event_counts_mv TO event_counts_state AS {_EVENT_COUNTS_SELECT}",
            """
            CREATE VIEW IF NOT EXISTS event_counts AS
            SELECT tenant, minute, kind, type, sum(events) AS events
            FROM event_counts_state GROUP BY tenant, minute, kind, type
            """,
            # --- batch sizes (per job: the size of the batch it ran in) ------------
            f"""
            CREATE TABLE IF NOT EXISTS batch_sizes_state (
                tenant LowCardinality(String),
                minute DateTime('UTC'),
                kind LowCardinality(String),
                jobs SimpleAggregateFunction(sum, UInt64),
                size_avg AggregateFunction(avg, UInt32),
                size_quantiles AggregateFunction(quantiles({QUANTILES}), UInt32),
                size_max SimpleAggregateFunction(max, UInt32)
            ) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMM(minute)
            ORDER BY (tenant, minute, kind)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS batch_sizes_mv TO batch_sizes_state AS {_BATCH_SIZES_SELECT}",
            f"""
            CREATE VIEW IF NOT EXISTS batch_sizes AS
            SELECT tenant, minute, kind, jobs_ AS jobs, size_avg_ AS size_avg, q[1] AS size_p50, q[2] AS size_p90,
                q[3] AS size_p99, size_max_ AS size_max
            FROM (
                SELECT tenant, minute, kind, sum(jobs) AS jobs_, avgMerge(size_avg) AS size_avg_,
                    quantilesMerge({QUANTILES})(size_quantiles) AS q, max(size_max) AS size_max_
                FROM batch_sizes_state GROUP BY tenant, minute, kind
            )
            """,
            # --- outcomes per minute: counts and latency quantiles ------------------
            f"""
            CREATE TABLE IF NOT EXISTS outcome_stats_state (
                tenant LowCardinality(String),
                minute DateTime('UTC'),
                kind LowCardinality(String),
                status LowCardinality(String),
                jobs SimpleAggregateFunction(sum, UInt64),
                queue_wait_s AggregateFunction(quantiles({QUANTILES}), Nullable(Float64)),
                run_s AggregateFunction(quantiles({QUANTILES}), Nullable(Float64)),
                total_s AggregateFunction(quantiles({QUANTILES}), Nullable(Float64))
            ) ENGINE = AggregatingMergeTree
            PARTITION BY toYYYYMM(minute)
            ORDER BY (tenant, minute, kind, status)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS outcome_stats_mv TO outcome_stats_state AS {_OUTCOME_STATS_SELECT}",
            f"""
            CREATE VIEW IF NOT EXISTS outcome_stats AS
            SELECT tenant, minute, kind, status, jobs_ AS jobs,
                qw[1] AS queue_wait_p50, qw[2] AS queue_wait_p90, qw[3] AS queue_wait_p99,
                r[1] AS run_p50, r[2] AS run_p90, r[3] AS run_p99,
                t[1] AS total_p50, t[2] AS total_p90, t[3] AS total_p99
            FROM (
                SELECT tenant, minute, kind, status, sum(jobs) AS jobs_,
                    quantilesMerge({QUANTILES})(queue_wait_s) AS qw, quantilesMerge({QUANTILES})(run_s) AS r,
                    quantilesMerge({QUANTILES})(total_s) AS t
                FROM outcome_stats_state GROUP BY tenant, minute, kind, status
            )
            """,
            """
            CREATE VIEW IF NOT EXISTS failure_rates AS
            SELECT tenant, minute, kind, finished, failed, failed / finished AS failure_rate
            FROM (
                SELECT tenant, minute, kind, sum(jobs) AS finished, sumIf(jobs, status = 'failed') AS failed
                FROM outcome_stats_state GROUP BY tenant, minute, kind
            )
            """,
            # --- backfill what version 1 already stored (MVs only see new inserts) ---
            f"INSERT INTO jobs_state {_JOBS_STATE_SELECT}",
            f"INSERT INTO event_counts_state {_EVENT_COUNTS_SELECT}",
            f"INSERT INTO batch_sizes_state {_BATCH_SIZES_SELECT}",
            _OUTCOMES_BACKFILL,  # feeds outcome_stats_state through its materialized view
        ],
    ),
    (
        3,
        "replays: which job re-ran which, and the per-job diff",
        [
            f"""
            CREATE TABLE IF NOT EXISTS replay_jobs (
                tenant LowCardinality(String),
                replay_id String,
                replay_of String,
                job_id String,
                calc_version LowCardinality(String),
                submitted_at {_TS}
            ) ENGINE = ReplacingMergeTree
            ORDER BY (tenant, replay_id, replay_of)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS replay_jobs_mv TO replay_jobs AS {_REPLAY_JOBS_SELECT}",
            f"INSERT INTO replay_jobs {_REPLAY_JOBS_SELECT}",
            f"CREATE VIEW IF NOT EXISTS replay_diff AS {_REPLAY_DIFF_SELECT}",
        ],
    ),
    (
        4,
        "each job counted once: deduplicated outcomes and results, rollups read from them",
        [
            # --- one store of terminal events, the first to reach Kafka kept per job -----------
            f"""
            CREATE TABLE IF NOT EXISTS job_outcomes_store (
                tenant LowCardinality(String),
                job_id String,
                kind LowCardinality(String),
                status LowCardinality(String),
                calc_version LowCardinality(String),
                error_type LowCardinality(String),
                attempts UInt16,
                result String,
                submitted_at {_NTS},
                started_at {_NTS},
                finished_at {_TS},
                queue_wait_s Nullable(Float64),
                run_s Nullable(Float64),
                total_s Nullable(Float64),
                kafka_partition UInt32,
                kafka_offset UInt64,
                first_wins UInt64
            ) ENGINE = ReplacingMergeTree(first_wins)
            ORDER BY (tenant, job_id)
            {_DEDUP}
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS job_outcomes_store_mv TO job_outcomes_store AS {_TERMINALS_SELECT}",
            # the job state's status: among terminal events the first to reach Kafka (feeds overlap harmlessly:
            # every state of jobs_state is idempotent)
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS jobs_state_v4_mv TO jobs_state AS "
            f"{_JOBS_STATE_SELECT.replace(_RANK, _STATUS_RANK_V4)}",
            "DROP VIEW IF EXISTS jobs_state_mv",
            # --- the old per-insert feeds counted every run: stop them ---------------------------
            "DROP VIEW IF EXISTS job_outcomes_mv",
            "DROP VIEW IF EXISTS job_results_mv",
            "DROP VIEW IF EXISTS outcome_stats_mv",
            "DROP VIEW IF EXISTS event_counts_mv",
            "DROP VIEW IF EXISTS batch_sizes_mv",
            # --- backfill: the old tables' rows, then every stored terminal event (which outranks them) ---
            _TERMINALS_FROM_OLD_TABLES,
            _TERMINALS_BACKFILL,
            # --- the names analysts query: views, one row per job --------------------------------------
            "DROP TABLE IF EXISTS job_outcomes",
            "DROP TABLE IF EXISTS job_results",
            f"CREATE VIEW IF NOT EXISTS job_outcomes AS SELECT {_OUTCOME_COLUMNS} FROM job_outcomes_store FINAL",
            f"CREATE VIEW IF NOT EXISTS job_results AS SELECT {_RESULT_COLUMNS} FROM job_outcomes_store FINAL "
            "WHERE status = 'succeeded'",
            # --- per-minute rollups, aggregated on read from the one-row-per-job sources ---------------
            "DROP VIEW IF EXISTS outcome_stats",
            "DROP VIEW IF EXISTS failure_rates",
            "DROP VIEW IF EXISTS event_counts",
            "DROP VIEW IF EXISTS batch_sizes",
            "DROP TABLE IF EXISTS outcome_stats_state",
            "DROP TABLE IF EXISTS event_counts_state",
            "DROP TABLE IF EXISTS batch_sizes_state",
            f"""
            CREATE VIEW IF NOT EXISTS outcome_stats AS
            SELECT tenant, minute, kind, status, jobs,
                qw[1] AS queue_wait_p50, qw[2] AS queue_wait_p90, qw[3] AS queue_wait_p99,
                r[1] AS run_p50, r[2] AS run_p90, r[3] AS run_p99,
                t[1] AS total_p50, t[2] AS total_p90, t[3] AS total_p99
            FROM (
                SELECT tenant, toStartOfMinute(toDateTime(finished_at, 'UTC')) AS minute, kind, status,
                    count() AS jobs, quantiles({QUANTILES})(queue_wait_s) AS qw, quantiles({QUANTILES})(run_s) AS r,
                    quantiles({QUANTILES})(total_s) AS t
                FROM job_outcomes GROUP BY tenant, minute, kind, status
            )
            """,
            """
            CREATE VIEW IF NOT EXISTS failure_rates AS
            SELECT tenant, minute, kind, finished, failed, failed / finished AS failure_rate
            FROM (
                SELECT tenant, toStartOfMinute(toDateTime(finished_at, 'UTC')) AS minute, kind,
                    count() AS finished, countIf(status = 'failed') AS failed
                FROM job_outcomes GROUP BY tenant, minute, kind
            )
            """,
            f"""
            CREATE VIEW IF NOT EXISTS event_counts AS
            SELECT tenant, toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, kind, type, count() AS events
            FROM ({visible_events()})
            GROUP BY tenant, minute, kind, type
            """,
            f"""
            CREATE VIEW IF NOT EXISTS batch_sizes AS
            SELECT tenant, minute, kind, jobs, size_avg, q[1] AS size_p50, q[2] AS size_p90, q[3] AS size_p99,
                size_max
            FROM (
                SELECT tenant, toStartOfMinute(toDateTime(started_at, 'UTC')) AS minute, kind, count() AS jobs,
                    avg(batch_size) AS size_avg, quantiles({QUANTILES})(batch_size) AS q, max(batch_size) AS size_max
                FROM ({_FIRST_RUNS}) WHERE batch_size > 0
                GROUP BY tenant, minute, kind
            )
            """,
        ],
    ),
    (
        5,
        "webhook delivery attempts",
        [
            # One row per attempt (the notifier writes them to Kafka, the sink inserts them). A row
            # read twice from Kafka has the same key and collapses; readers use FINAL (rows per job are few).
            f"""
            CREATE TABLE IF NOT EXISTS webhook_deliveries (
                tenant LowCardinality(String),
                job_id String,
                event LowCardinality(String),
                seq UInt32,
                webhook_id String,
                url String,
                attempt UInt32,
                attempted_at {_TS},
                status_code UInt16,
                duration_ms Float64,
                outcome LowCardinality(String),
                error String,
                response String
            )
            ENGINE = ReplacingMergeTree
            PARTITION BY toYYYYMM(attempted_at)
            ORDER BY (tenant, job_id, webhook_id, attempted_at, attempt)
            {_DEDUP}
            """,
        ],
    ),
    (
        6,
        "result reuse: one row per request answered by an earlier job, and its per-minute rollup",
        [
            """
            CREATE TABLE IF NOT EXISTS job_reuses (
                tenant LowCardinality(String),
                answer_id String,
                kind LowCardinality(String),
                job_id String,
                how LowCardinality(String),
                ts DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree
            ORDER BY (tenant, answer_id)
            """,
            # uniqExact(answer_id): a record the sink wrote twice counts once, without FINAL
            """
            CREATE VIEW IF NOT EXISTS reuse_stats AS
            SELECT tenant, toStartOfMinute(toDateTime(ts, 'UTC')) AS minute, kind, how, uniqExact(answer_id) AS reused
            FROM job_reuses GROUP BY tenant, minute, kind, how
            """,
        ],
    ),
]

LATEST = MIGRATIONS[-1][0]


def migrate(client, target: int | None = None) -> list[int]:
    """Apply pending migrations up to ``target`` (default: all); returns the versions applied now."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = applied_versions(client)
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done or (target is not None and version > target):
            continue
        for statement in statements:
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])
        logger.info("applied ClickHouse migration %d (%s)", version, name)
        applied.append(version)
    return applied


def applied_versions(client) -> set[int]:
    return {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}


def apply_events_ttl(client, days: int) -> str | None:
    """Make ``job_events``' TTL match ``days`` (0: keep forever); returns the change made, if any.

    A setting, not a migration: the retention is an operator's choice that can
    change at any restart. Only a real change runs an ALTER (which rewrites
    parts to apply the new TTL), so restarts with the same value cost nothing.
    """
    if days < 0:
        raise ValueError("events TTL days must be >= 0")
    current = events_ttl(client)
    wanted = f"toDateTime(ts) + toIntervalDay({days})" if days else None
    if current == wanted:
        return None
    if wanted is None:
        client.command("ALTER TABLE job_events REMOVE TTL")
        logger.info("job_events TTL removed (events are kept forever)")
        return "removed"
    client.command(f"ALTER TABLE job_events MODIFY TTL toDateTime(ts) + INTERVAL {int(days)} DAY")
    logger.info("job_events TTL set to %d days", days)
    return f"{days} days"


def events_ttl(client) -> str | None:
    """The TTL expression of ``job_events`` as ClickHouse reports it, or None."""
    (create,) = client.query(
        "SELECT create_table_query FROM system.tables WHERE database = currentDatabase() AND name = 'job_events'"
    ).result_rows[0]
    marker = " TTL "
    if marker not in create:
        return None
    return create.split(marker, 1)[1].split(" SETTINGS ", 1)[0].strip()
