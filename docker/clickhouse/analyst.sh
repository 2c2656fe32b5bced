#!/bin/bash
# The ClickHouse user analysts' SQL runs as (POST /v1/sql and `jobstream sql` when
# JOBSTREAM_SQL_CLICKHOUSE_USER is set): SELECT on jobstream's database and nothing else —
# no FILE/URL/S3/REMOTE sources, no KILL QUERY, no other database — in a profile that keeps
# it read-only (readonly = 1, constant) and lets jobstream set only its per-query limits.
#
# The clickhouse image runs this once, on first start with an empty data volume, from
# /docker-entrypoint-initdb.d (docker-compose.yml mounts it there). On an existing server, run
# it by hand with CLICKHOUSE_PASSWORD (an admin's) and JOBSTREAM_SQL_CLICKHOUSE_PASSWORD set.
# jobstream keeps its tables in the connection's database: `default` unless CLICKHOUSE_URL says
# otherwise (CLICKHOUSE_ANALYST_DATABASE here must name the same one).
set -euo pipefail

user="${JOBSTREAM_SQL_CLICKHOUSE_USER:-jobstream_analyst}"
database="${CLICKHOUSE_ANALYST_DATABASE:-default}"
: "${JOBSTREAM_SQL_CLICKHOUSE_PASSWORD:?set JOBSTREAM_SQL_CLICKHOUSE_PASSWORD}"
# Only the password's SHA-256 reaches ClickHouse (and its query log).
hash="$(printf '%s' "$JOBSTREAM_SQL_CLICKHOUSE_PASSWORD" | sha256sum | cut -d' ' -f1)"

clickhouse client --user "${CLICKHOUSE_USER:-default}" --password "${CLICKHOUSE_PASSWORD:-}" --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS \`${database}\`;
CREATE SETTINGS PROFILE OR REPLACE jobstream_analyst SETTINGS
    readonly = 1 CONST,
    max_result_rows MIN 1 CHANGEABLE_IN_READONLY,
    max_result_bytes MIN 1 CHANGEABLE_IN_READONLY,
    result_overflow_mode CHANGEABLE_IN_READONLY,
    max_execution_time MIN 1 CHANGEABLE_IN_READONLY;
CREATE USER OR REPLACE \`${user}\` IDENTIFIED WITH sha256_hash BY '${hash}'
    DEFAULT DATABASE \`${database}\` SETTINGS PROFILE jobstream_analyst;
REVOKE ALL ON *.* FROM \`${user}\`;
GRANT SELECT ON \`${database}\`.* TO \`${user}\`;
SQL
echo "created ClickHouse user ${user}: SELECT on ${database}.* only"
