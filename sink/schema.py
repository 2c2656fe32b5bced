"""Versioned ClickHouse migrations, applied in order exactly once at start-up.

Each migration is a list of statements; ``schema_migrations`` records which
versions ran. Same SQL on embedded chDB and on a ClickHouse server.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

# Insert dedup window: a retried insert with the same insert_deduplication_token is dropped.
DEDUP_WINDOW = 10_000

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
]


def migrate(client) -> list[int]:
    """Apply pending migrations; returns the versions applied now."""
    client.command(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version UInt32, name String, applied_at DateTime DEFAULT now()) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query("SELECT version FROM schema_migrations FINAL").result_rows}
    applied = []
    for version, name, statements in MIGRATIONS:
        if version in done:
            continue
        for statement in statements:
            client.command(statement)
        client.insert("schema_migrations", [[version, name]], column_names=["version", "name"])
        logger.info("applied ClickHouse migration %d (%s)", version, name)
        applied.append(version)
    return applied
