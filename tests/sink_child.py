"""A sink in a process of its own, for the crash tests: it can SIGKILL itself mid-batch.

    python -m tests.sink_child run [--crash after-intent|before-commit] [--crash-batch N]
    python -m tests.sink_child count --tenant T

Settings come from the environment like ``jobstream serve --role sink``. The
crash points are the moments a real process can die in: after the intent was
committed but before the insert, and after the insert but before the offset
commit. (A death half-way through ClickHouse's insert is the partly-written
case that tests/test_analytics.py proves a retry completes.) ``count`` prints what ClickHouse holds for
a tenant. With chDB the children share a data dir of their own (one process at a
time), never the test process's.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import orjson

from sink.group import group_lag
from sink.sink import Sink, SinkConfig
from store.clickhouse import ClickHouseStore
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

# Short session: the restarted sink gets the dead one's partitions after ~6 s, not 45 s.
CONSUMER = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}


def _die(report: str | None, note: dict) -> None:
    if report:
        with open(report, "wb") as out:
            out.write(orjson.dumps(note))
    os.kill(os.getpid(), signal.SIGKILL)


def run(args: argparse.Namespace) -> None:
    settings = Settings()
    store = ClickHouseStore(settings.clickhouse_url, database=args.database)
    batches = {"n": 0}

    class CrashingSink(Sink):
        def _commit(self, ranges, *, intent):  # type: ignore[no-untyped-def]
            if args.crash == "before-commit" and not intent:  # every insert done, offsets not committed
                batches["n"] += 1
                if batches["n"] == args.crash_batch:
                    _die(args.report, {"crash": args.crash, "ranges": ranges.describe()})
            done = super()._commit(ranges, intent=intent)
            if args.crash == "after-intent" and intent:  # intent recorded, nothing inserted yet
                batches["n"] += 1
                if batches["n"] == args.crash_batch:
                    _die(args.report, {"crash": args.crash, "ranges": ranges.describe()})
            return done

    sink = CrashingSink(
        KafkaConnection.from_settings(settings), store, SinkConfig.from_settings(settings), consumer_overrides=CONSUMER
    ).start()
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            if (
                sink.stats.events_written >= args.min_events
                and group_lag(KafkaConnection.from_settings(settings), settings) == 0
            ):
                break
            time.sleep(0.2)  # a child's own progress poll, not a test's synchronisation
        else:
            raise SystemExit(f"sink did not catch up in {args.timeout}s: {sink.stats}")
    finally:
        sink.stop()
        store.close()
    sys.stdout.write(orjson.dumps(sink.stats.__dict__).decode() + "\n")


def count(args: argparse.Namespace) -> None:
    settings = Settings()
    store = ClickHouseStore(settings.clickhouse_url, database=args.database)
    t = {"t": args.tenant}
    one = lambda sql: store.query(sql, t)[0][0]  # noqa: E731
    sys.stdout.write(
        orjson.dumps(
            {
                "events": one("SELECT count() FROM job_events WHERE tenant = {t:String}"),
                "distinct_events": one("SELECT uniqExact(job_id, seq) FROM job_events WHERE tenant = {t:String}"),
                "results": one("SELECT count() FROM job_results WHERE tenant = {t:String}"),
                "outcomes": one("SELECT count() FROM job_outcomes WHERE tenant = {t:String}"),
                "timed_outcomes": one(
                    "SELECT count() FROM job_outcomes WHERE tenant = {t:String} AND total_s IS NOT NULL"
                ),
                "jobs": one("SELECT count() FROM jobs WHERE tenant = {t:String}"),
                "jobs_succeeded": one("SELECT count() FROM jobs WHERE tenant = {t:String} AND status = 'succeeded'"),
                "counted_events": one("SELECT sum(events) FROM event_counts WHERE tenant = {t:String}"),
                "counted_outcomes": one("SELECT sum(jobs) FROM outcome_stats WHERE tenant = {t:String}"),
            }
        ).decode()
        + "\n"
    )
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--crash", choices=["none", "after-intent", "before-commit"], default="none")
    r.add_argument("--crash-batch", type=int, default=2)
    r.add_argument("--report")
    r.add_argument("--min-events", type=int, default=0)
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--database")
    c = sub.add_parser("count")
    c.add_argument("--tenant", required=True)
    c.add_argument("--database")
    args = parser.parse_args()
    run(args) if args.command == "run" else count(args)


if __name__ == "__main__":
    main()
