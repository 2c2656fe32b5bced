"""CPU per event of the API process's filtering readers of ``jobs.events`` (no broker needed).

    .venv/bin/python -m bench.readers_bench [--jobs 20000] [--values 100] [--baseline DIR]

Under ``jobstream up`` the API process runs several readers of ``jobs.events`` beside its HTTP
loop, and they share its GIL: under a flood their per-event CPU is time the loop waits for
(docs/benchmarks.md, "Fairness", session 6). Two of them only filter: the notifier (it acts on the
events of jobs with a webhook) and the tenant backlog (it counts waiting jobs per tenant). This
times their per-record step on ``--jobs`` jobs' events as a worker writes them (queued with
``--values`` values of params, running, progress 0.5, progress 1, succeeded), in CPU time, best
of five, plus ``wire.decode_event`` alone as the unit of a full parse:

- notifier: ``_Reader._from_event`` for jobs without a webhook (the common case), on real
  ``confluent_kafka.Message`` objects, with their headers when the code asks for them;
- tenant backlog: ``TenantBacklog.handle`` on chunks of 2,000 records, the jobs held by this
  process (submitted through it, as in ``up``).

``--baseline DIR``: the same measurement in DIR's code (a child process with DIR first on its
path), printed beside this checkout's with the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class _Record:
    """The part of ``confluent_kafka.Message`` the readers use."""

    __slots__ = ("_key", "_value", "_offset")

    def __init__(self, key: bytes, value: bytes, offset: int) -> None:
        self._key, self._value, self._offset = key, value, offset

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def topic(self) -> str:
        return "jobs.events"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000))

    def error(self) -> None:
        return None


class _NoConsumer:
    """Stands in for the Kafka consumer a reader builds: the per-record step never touches it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _NoSubscriptions:
    def get(self, job_id: str) -> None:
        return None


def _events(jobs: int, values: int) -> list[tuple[str, str, list[_Record]]]:
    from streams import wire
    from streams.events import EventType, new_job_id, utcnow

    out = []
    offset = 0
    for i in range(jobs):
        job_id, tenant, now = new_job_id(), f"tenant-{i % 3}", utcnow()
        params = {"values": [float(v) for v in range(values)]}
        data: list[tuple[EventType, dict[str, Any]]] = [
            (EventType.QUEUED, {"priority": 0, "timeout_s": None, "params": params}),
            (EventType.RUNNING, {"attempt": 1, "worker": "w-1"}),
            (EventType.PROGRESS, {"fraction": 0.5}),
            (EventType.PROGRESS, {"fraction": 1.0}),
            (EventType.SUCCEEDED, {"result": {"count": values, "mean": 49.5, "std": 28.9, "p99": 98.0}}),
        ]
        records = []
        for seq, (type_, d) in enumerate(data):
            value = wire.encode_event(job_id, tenant, seq, type_, "stats.describe", d, now)
            records.append(_Record(job_id.encode(), value, offset))
            offset += 1
        out.append((job_id, tenant, records))
    return out


def _best_us(fn: Callable[[], None], events: int) -> float:
    best = float("inf")
    for _ in range(5):  # the best of five: the least disturbed by other work on the machine
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best / events * 1e6


def measure(jobs: int, values: int) -> dict[str, float]:
    """µs of CPU per event of each step, in the code this process imports."""
    import streams.reader
    from notifier.notifier import _Reader
    from streams import wire
    from streams.backlog import TenantBacklog
    from streams.kafka_config import KafkaConnection

    streams.reader.Consumer = _NoConsumer  # type: ignore[assignment,misc]
    built = _events(jobs, values)
    records = [r for _, _, rs in built for r in rs]
    n = len(records)

    def decode() -> None:
        for r in records:
            wire.decode_event(r.value())

    subscriptions = _NoSubscriptions()

    import inspect

    from confluent_kafka import Message

    messages = [Message(key=r.key(), value=r.value()) for r in records]  # real ones: headers() is a C call
    with_headers = len(inspect.signature(_Reader._from_event).parameters) > 2  # as handle() calls it

    def notifier() -> None:
        if with_headers:
            for m in messages:
                _Reader._from_event(m.value(), subscriptions, m.headers)  # type: ignore[arg-type,call-arg]
        else:
            for m in messages:
                _Reader._from_event(m.value(), subscriptions)  # type: ignore[arg-type]

    def backlog() -> None:
        kafka = KafkaConnection(bootstrap="127.0.0.1:9", max_message_bytes=1 << 20, produce_timeout_s=1.0)
        reader = TenantBacklog(kafka, "jobs.events", window_s=600)
        by_tenant: dict[str, list[str]] = {}
        for job_id, tenant, _ in built:
            by_tenant.setdefault(tenant, []).append(job_id)
        for tenant, ids in by_tenant.items():
            reader.hold(tenant, ids)
        for start in range(0, n, 2000):
            reader.handle(records[start : start + 2000])  # type: ignore[arg-type]
        assert reader.waiting_by_tenant() == {}, "every job started: none may be counted as waiting"

    return {
        "wire.decode_event": _best_us(decode, n),
        "notifier (no webhooks)": _best_us(notifier, n),
        "tenant backlog": _best_us(backlog, n),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--values", type=int, default=100, help="values in each job's params")
    parser.add_argument("--baseline", type=Path, help="another checkout, measured side by side")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the child's answer
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args.jobs, args.values)))
        return
    columns: dict[str, dict[str, float]] = {}
    if args.baseline:
        root = args.baseline.resolve()
        out = subprocess.run(
            [sys.executable, __file__, "--json", "--jobs", str(args.jobs), "--values", str(args.values)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        columns["before"] = json.loads(out.strip().splitlines()[-1])
    columns["after" if args.baseline else "this checkout"] = measure(args.jobs, args.values)
    print(f"{args.jobs:,} jobs × 5 events, {args.values} values of params; µs of CPU per event (best of 5)")
    names = list(columns)
    print("| step | " + " | ".join(names) + (" | after/before |" if args.baseline else " |"))
    print("|---|" + "---:|" * (len(names) + (1 if args.baseline else 0)))
    for step in columns[names[-1]]:
        row = [f"{columns[c].get(step, float('nan')):.2f}" for c in names]
        ratio = f" | {columns['after'][step] / columns['before'][step]:.2f}×" if args.baseline else ""
        print(f"| {step} | " + " | ".join(row) + ratio + " |")


if __name__ == "__main__":
    main()
