"""Fairness between tenants and priority across a backlog, on the whole pipeline (issue 17).

    .venv/bin/python -m bench.fairness_bench [--jobs 20000] [--seconds 30] [--burst-via kafka|api] [--baseline DIR]
        [--rounds N] [--verbose]

``jobstream up`` with one worker (API + SSE gateway + sink in one process), two tenants by API key,
on a local broker; small ``stats.describe`` jobs, submitted over HTTP (bursts as ``POST /v1/jobs:batch``
of 500, one after another from one client; B's jobs as single ``POST /v1/jobs``):

1. **A alone**: tenant A submits ``--jobs`` jobs at once; A's throughput.
2. **A + B**: the same burst of A; one second after it starts, tenant B submits 1 job/s for ``--seconds``:
   B's end-to-end p50/p99 (submit → its terminal event read here; target p99 < 1 s) and A's throughput
   against phase 1 (target ≥ 90%).
3. **priority**: A submits ``--jobs`` priority-0 jobs, then one priority-9 job: its time to start
   (submit → its ``running`` event read here; target < 1 s) and to end.

``--burst-via kafka`` (the default) produces A's bursts straight onto ``jobs.requested`` with the API's
record builder (``wire.build``/``wire.records``, request and queued event, on the partitions the code under
test would choose: its partitioner, or the job id key for a ``--baseline`` from before it), so the backlog is in
Kafka at once: on a busy 2-core machine the API's submit rate otherwise caps the burst below what the worker
runs, and no backlog forms. ``--burst-via api`` submits them over HTTP. B's and the priority-9 job always go
through the API.

With ``--baseline DIR`` the same phases run first on that checkout's code, on the same broker.
``--rounds N`` repeats phases 1 and 2 N times in one ``up``, their order alternating: A's share moves
by ±25% between two single phases of the same code (docs/benchmarks.md, session 7), so one round
cannot tell 90% from 100%.
Tenant names are picked so A and B have no ordinary partition in common under this checkout's
partitioner (a shared partition is FIFO between them: README, "Fair sharing").
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import orjson
from confluent_kafka import Consumer, Producer

from bench.common import ROOT, broker_connection, free_port, jobstream_process, prepare
from bench.processors_bench import small_job
from streams import topics, wire
from streams.events import new_job_id
from streams.kafka_config import ROLES, KafkaConnection
from streams.partitioning import RequestPartitioner
from streams.settings import Settings
from streams.topics import JobTopics

SUBMIT_CHUNK = 500
_PROGRESS = b'"type":"progress"'
_TERMINAL = (b'"type":"succeeded"', b'"type":"failed"', b'"type":"cancelled"')


class Events:
    """Reads jobs.events on a thread: when each job's first ``running`` and its terminal event arrived."""

    def __init__(self, kafka: KafkaConnection, settings: Settings) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        #: job id → (worker's emit, producer's CreateTime, read here) of its ``running`` event, wall clock seconds
        self.started_wall: dict[str, tuple[float, float, float]] = {}
        self._consumer = Consumer(kafka.for_role("admin").consumer_config(f"bench-{uuid.uuid4().hex}"))
        self._consumer.subscribe([settings.topic(topics.EVENTS)])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, timeout=0.01):
                if message.error():
                    continue
                now = time.monotonic()
                value = message.value()
                if _PROGRESS in value:
                    continue
                event = orjson.loads(value)
                job_id = event["job_id"]
                if b'"type":"running"' in value:
                    self.started.setdefault(job_id, now)
                    emitted = datetime.fromisoformat(event["ts"]).timestamp()
                    self.started_wall.setdefault(job_id, (emitted, message.timestamp()[1] / 1000, time.time()))
                elif any(t in value for t in _TERMINAL):
                    self.ended.setdefault(job_id, now)

    def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(j not in self.ended for j in ids):
            if time.monotonic() > deadline:
                missing = sum(j not in self.ended for j in ids)
                raise RuntimeError(f"{missing} of {len(ids)} jobs did not finish within {timeout_s}s")
            time.sleep(0.05)  # bench only: polling a dict another thread fills

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def burst(
    client: httpx.Client, count: int, priority: int = 0, started: threading.Event | None = None
) -> dict[str, float]:
    """Submit ``count`` jobs in batches of 500; job id → when its batch was sent. ``started`` is set
    when the first batch goes out."""
    submitted: dict[str, float] = {}
    for start in range(0, count, SUBMIT_CHUNK):
        jobs = [{**small_job(i), "priority": priority} for i in range(start, min(count, start + SUBMIT_CHUNK))]
        t0 = time.monotonic()
        if started is not None:
            started.set()
        response = client.post("/v1/jobs:batch", json={"jobs": jobs})
        if response.status_code != 202 or response.json()["rejected"]:
            raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
        submitted.update({item["job_id"]: t0 for item in response.json()["jobs"]})
    return submitted


class KafkaBurst:
    """A tenant's burst produced as the API would write it, all at once."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, partitioned: bool) -> None:
        self._producer = Producer(kafka.for_role("api").producer_config())
        self._topics = JobTopics.from_settings(settings)
        self._partitioned = partitioned

    def __call__(
        self, tenant: str, count: int, priority: int = 0, started: threading.Event | None = None
    ) -> dict[str, float]:
        """``started`` is set when the first record is produced (after the records are built)."""
        jobs = [
            wire.build(new_job_id(), tenant, "stats.describe", small_job(i)["params"], priority, None)
            for i in range(count)
        ]
        records = [r for job in jobs for r in wire.records(job, self._topics)]  # built before the clock starts
        t0 = time.monotonic()
        if started is not None:
            started.set()
        for r in records:
            partition = r.partition if self._partitioned else -1
            self._producer.produce(r.topic, key=r.key, value=r.value, partition=partition)
            self._producer.poll(0)
        if self._producer.flush(120):
            raise RuntimeError("burst not acknowledged by Kafka")
        return {job.job_id: t0 for job in jobs}


ACCEPTED: dict[str, float] = {}  # job id → seconds its POST took (the API's part of a single submit)
SUBMITTED_WALL: dict[str, float] = {}  # job id → wall clock when its POST was sent


def single(client: httpx.Client, priority: int = 0) -> tuple[str, float]:
    wall, t0 = time.time(), time.monotonic()
    response = client.post("/v1/jobs", json={**small_job(7), "priority": priority})
    if response.status_code != 202:
        raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
    ACCEPTED[response.json()["job_id"]] = time.monotonic() - t0
    SUBMITTED_WALL[response.json()["job_id"]] = wall
    return response.json()["job_id"], t0


def throughput(events: Events, submitted: dict[str, float]) -> float:
    return len(submitted) / (max(events.ended[j] for j in submitted) - min(submitted.values()))


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


@dataclass
class Figures:
    a_alone: float = 0.0  # jobs/s (the median over rounds)
    a_with_b: float = 0.0
    shares: list[float] = field(default_factory=list)  # A with B / A alone, per round
    b_p50_ms: float = 0.0
    b_p99_ms: float = 0.0
    b_max_ms: float = 0.0
    b_accepted_p99_ms: float = 0.0  # of which its POST (the API)
    b_started_p99_ms: float = 0.0  # submit → running event
    #: of which, p99 of each leg (wall clocks, one machine): submit → the worker emits ``running``;
    #: emit → the worker's producer takes it (its outbox queue; the record's CreateTime); → read here
    b_start_legs_p99_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    urgent_start_ms: float = 0.0
    urgent_end_ms: float = 0.0
    backlog_left: int = 0  # priority-0 jobs still unfinished when the priority-9 job ended


def run(kafka: KafkaConnection, args: argparse.Namespace, root: Path, tenants: tuple[str, str]) -> Figures:
    prefix = f"fb{uuid.uuid4().hex[:6]}."
    settings = Settings(kafka_bootstrap=kafka.bootstrap, topic_prefix=prefix)
    prepare(kafka, settings)
    keys = {tenant: f"{tenant}-key-{uuid.uuid4().hex}" for tenant in tenants}
    env = {
        **kafka.env(roles=ROLES),
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_WORKERS": "1",
        "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
        "JOBSTREAM_TENANT_MAX_QUEUED_JOBS": str(10**9),
        "JOBSTREAM_API_KEYS": ",".join(f"{t}={k}" for t, k in keys.items()),
    }
    a, b = tenants
    events = Events(kafka, settings)
    figures = Figures()
    try:
        with jobstream_process(["up", "--log-level", "warning"], env, free_port(), root=root) as url:
            clients = {
                t: httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {k}"})
                for t, k in keys.items()
            }
            events.wait(list(burst(clients[a], 200)) + list(burst(clients[b], 50)), 300)  # warm-up
            if args.burst_via == "kafka":
                # a checkout from before tenant partitions: A's burst keyed by job id, as its API would
                a_burst = KafkaBurst(kafka, settings, partitioned=(root / "streams" / "partitioning.py").exists())

                def flood_of_a(count: int, started: threading.Event | None = None) -> dict[str, float]:
                    return a_burst(a, count, started=started)
            else:

                def flood_of_a(count: int, started: threading.Event | None = None) -> dict[str, float]:
                    return burst(clients[a], count, started=started)

            mine: dict[str, float] = {}

            def a_alone() -> float:
                alone = flood_of_a(args.jobs)
                events.wait(list(alone), 900)
                return throughput(events, alone)

            def a_with_b() -> float:
                these: dict[str, float] = {}
                a_submitting = threading.Event()

                def tenant_b() -> None:
                    a_submitting.wait()  # A's records are built: its submission starts now
                    time.sleep(1.0)  # bench only: B starts one second after A's burst
                    started = time.monotonic()
                    for i in range(int(args.seconds)):
                        time.sleep(max(0.0, started + i - time.monotonic()))  # 1 job/s, open loop
                        job_id, t0 = single(clients[b])
                        these[job_id] = t0

                b_thread = threading.Thread(target=tenant_b)
                b_thread.start()
                flood = flood_of_a(args.jobs, a_submitting)
                b_thread.join()
                events.wait(list(flood) + list(these), 900)
                mine.update(these)
                return throughput(events, flood)

            alone_rates, with_b_rates = [], []
            for round_ in range(args.rounds):  # the phases' order alternates: neither always runs first
                if round_ % 2 == 0:
                    alone_rates.append(a_alone())
                    with_b_rates.append(a_with_b())
                else:
                    with_b_rates.append(a_with_b())
                    alone_rates.append(a_alone())
            figures.a_alone = float(np.median(alone_rates))
            figures.a_with_b = float(np.median(with_b_rates))
            figures.shares = [w / a for w, a in zip(with_b_rates, alone_rates, strict=True)]
            latencies = [events.ended[j] - t0 for j, t0 in mine.items()]
            figures.b_accepted_p99_ms = ms([ACCEPTED[j] for j in mine], 99)
            figures.b_started_p99_ms = ms([events.started[j] - t0 for j, t0 in mine.items()], 99)
            legs = [events.started_wall[j] for j in mine]
            if args.verbose:
                print("B's jobs: sent at s | POST ms | submit → emit ms | outbox ms | read ms | end ms")
                first = min(mine.values())
                for (j, t0), (emit, append, read) in zip(mine.items(), legs, strict=True):
                    ended = events.ended[j] - t0
                    figures_ms = (ACCEPTED[j], emit - SUBMITTED_WALL[j], append - emit, read - append, ended)
                    print(f"  {t0 - first:5.1f} | " + " | ".join(f"{x * 1000:6.0f}" for x in figures_ms))
            figures.b_start_legs_p99_ms = (
                ms([emit - SUBMITTED_WALL[j] for j, (emit, _, _) in zip(mine, legs, strict=True)], 99),
                ms([append - emit for emit, append, _ in legs], 99),
                ms([read - append for _, append, read in legs], 99),
            )
            figures.b_p50_ms, figures.b_p99_ms, figures.b_max_ms = (
                ms(latencies, 50),
                ms(latencies, 99),
                ms(latencies, 100),
            )

            backlog = flood_of_a(args.jobs)
            urgent, t0 = single(clients[a], priority=9)
            events.wait([urgent], 900)
            figures.urgent_start_ms = (events.started[urgent] - t0) * 1000
            figures.urgent_end_ms = (events.ended[urgent] - t0) * 1000
            figures.backlog_left = sum(j not in events.ended or events.ended[j] > events.ended[urgent] for j in backlog)
            events.wait(list(backlog), 900)
            for client in clients.values():
                client.close()
    finally:
        events.close()
    return figures


def pick_tenants() -> tuple[str, str]:
    """``tenant-a`` and the first ``tenant-b…`` with no ordinary partition in common with it."""
    partitioner = RequestPartitioner.from_settings(Settings())
    home = set(partitioner.tenant_home("tenant-a"))
    names = ["tenant-b", *(f"tenant-b{i}" for i in range(100))]
    return "tenant-a", next(n for n in names if not set(partitioner.tenant_home(n)) & home)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000, help="tenant A's burst (and the priority backlog)")
    parser.add_argument("--seconds", type=int, default=30, help="how long tenant B submits 1 job/s")
    parser.add_argument(
        "--burst-via", choices=("kafka", "api"), default="kafka", help="how A's bursts are submitted (see above)"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout: its code runs first, on the same broker")
    parser.add_argument("--verbose", action="store_true", help="print each of B's jobs: its legs (ms)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat A alone / A with B this many times in one run, the order alternating (A's share per "
        "round and the medians are printed; B's latencies are pooled over the rounds)",
    )
    args = parser.parse_args()
    tenants = pick_tenants()
    roots = [("before", args.baseline.resolve()), ("after", ROOT)] if args.baseline else [("", ROOT)]
    results: dict[str, Figures] = {}
    load = [os.getloadavg()[0]]
    with broker_connection() as kafka:
        for label, root in roots:
            results[label] = run(kafka, args, root, tenants)
            load.append(os.getloadavg()[0])
    print(
        f"tenants {tenants}; A's burst {args.jobs:,} via {args.burst_via}; "
        f"load average (1 min) {' → '.join(f'{x:.1f}' for x in load)}"
    )
    print(
        "| code | A alone jobs/s | A with B jobs/s (share) | B p50 ms | B p99 ms | B max ms | B p99 POST ms "
        "| B p99 start ms (emit / outbox / read) | priority-9 start ms | end ms | backlog left behind it |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, f in results.items():
        print(
            f"| {label or 'this'} | {f.a_alone:,.0f} | {f.a_with_b:,.0f} ({f.a_with_b / f.a_alone:.0%}) | "
            f"{f.b_p50_ms:,.0f} | {f.b_p99_ms:,.0f} | {f.b_max_ms:,.0f} | {f.b_accepted_p99_ms:,.0f} | "
            f"{f.b_started_p99_ms:,.0f} ({' / '.join(f'{x:,.0f}' for x in f.b_start_legs_p99_ms)}) | "
            f"{f.urgent_start_ms:,.0f} | "
            f"{f.urgent_end_ms:,.0f} | {f.backlog_left:,} |"
        )
    if args.rounds > 1:
        for label, f in results.items():
            print(f"{label or 'this'}: A's share per round {', '.join(f'{x:.0%}' for x in f.shares)}")


if __name__ == "__main__":
    main()
