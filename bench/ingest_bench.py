"""Submit throughput and latency of the ingest API, next to a bare producer's ceiling.

    .venv/bin/python -m bench.ingest_bench [--seconds 10] [--concurrency 64] [--baseline DIR [--rounds N]]
        [--security sasl_ssl]

In one run, against one real broker:
1. ceiling: a bare confluent-kafka producer in this process sending the same two
   records per job (request + queued event), idempotent, acks=all;
2. ``POST /v1/jobs`` with ``--concurrency`` clients in flight;
3. ``POST /v1/jobs:batch`` with 100 jobs per request.
The API is one uvicorn process; the load generator is another. The CPU each side
really used is measured (``/proc``), so besides raw jobs/s the table gives jobs/s
per core used: the API's against the bare producer's, which is what "x% of the
ceiling per core" means on a machine where the broker and the load generator take
cores too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from confluent_kafka import Producer

from bench.common import (
    ROOT,
    SECURITY_CHOICES,
    broker_connection,
    cpu_seconds,
    free_port,
    jobstream_service,
    percentiles_ms,
    prepare,
)
from streams import topics
from streams.events import EventType, JobEvent, JobRequested
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import dumps

JOB = {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0, 4.0]}}


def ceiling(kafka: KafkaConnection, settings: Settings, seconds: float) -> float:
    producer = Producer(kafka.for_role("api").producer_config())
    requested, events = settings.topic(topics.REQUESTED), settings.topic(topics.EVENTS)
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        for _ in range(1000):
            job_id = uuid.uuid4().hex
            request = JobRequested(job_id=job_id, kind=JOB["kind"], params=JOB["params"])
            queued = JobEvent(job_id=job_id, seq=0, type=EventType.QUEUED, kind=JOB["kind"])
            while True:
                try:
                    producer.produce(requested, key=job_id.encode(), value=dumps(request))
                    producer.produce(events, key=job_id.encode(), value=dumps(queued))
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)
            sent += 1
    producer.flush()
    return sent / (time.monotonic() - started)


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %f %f %f\\n", summary.requests, summary.duration / 1e6,
                         latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
"""


def single_wrk(url: str, seconds: float, concurrency: int) -> tuple[float, dict[str, float]]:
    """wrk (C, one thread) as the load generator: httpx itself tops out near 1k req/s."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT.replace("{body}", orjson.dumps(JOB).decode()))
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "-s", script.name, f"{url}/v1/jobs"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests, duration, p50, p99 = out.split("RESULT ")[1].split()
    if "Non-2xx" in out:
        raise RuntimeError(out)
    return int(requests) / float(duration), {"p50_ms": float(p50), "p99_ms": float(p99)}


async def closed_loop(
    url: str, path: str, body: dict, jobs_per_request: int, seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    """``concurrency`` clients posting ``body`` back to back for ``seconds``: (jobs/s, request latencies)."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def loop() -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                response = await client.post(path, json=body)
                if response.status_code != 202:
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                latencies.append(time.monotonic() - t0)

        started = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        return len(latencies) * jobs_per_request / (time.monotonic() - started), latencies


async def single(url: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    return await closed_loop(url, "/v1/jobs", JOB, 1, seconds, concurrency)


async def batched(url: str, seconds: float, concurrency: int, size: int = 100) -> tuple[float, list[float]]:
    return await closed_loop(url, "/v1/jobs:batch", {"jobs": [JOB] * size}, size, seconds, concurrency)


class CpuMeter:
    """Cores a process used between ``start`` and ``stop`` (CPU seconds / wall seconds)."""

    def __init__(self, read: Callable[[], float]) -> None:
        self._read = read
        self.cores = 0.0

    def __enter__(self) -> CpuMeter:
        self._cpu, self._wall = self._read(), time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cores = (self._read() - self._cpu) / (time.monotonic() - self._wall)


def measure_api(root: Path, env: dict[str, str], args: argparse.Namespace) -> tuple[tuple, tuple, str]:
    """Single and batch submits against one API process running the code of checkout ``root``."""
    with jobstream_service(["serve", "--role", "api", "--log-level", "warning"], env, free_port(), root=root) as api:
        url = api.url
        asyncio.run(single(url, 2, 8))  # warm-up
        with CpuMeter(lambda: cpu_seconds(api.pid)) as single_cpu:
            if shutil.which("wrk"):
                api_rate, single_pct = single_wrk(url, args.seconds, args.concurrency)
                generator = "wrk"
            else:
                api_rate, api_lat = asyncio.run(single(url, args.seconds, args.concurrency))
                single_pct, generator = percentiles_ms(api_lat), "httpx (install wrk for a faster generator)"
        with CpuMeter(lambda: cpu_seconds(api.pid)) as batch_cpu:
            batch_rate, batch_lat = asyncio.run(batched(url, args.seconds, 4))
    return (api_rate, single_pct, single_cpu.cores), (batch_rate, percentiles_ms(batch_lat), batch_cpu.cores), generator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument(
        "--security",
        choices=SECURITY_CHOICES,
        default="plaintext",
        help="sasl_ssl: a secured local broker (SCRAM over TLS, per-role ACLs) to price transport security",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of the previous "
        "commit) whose API is measured first, in the same run, for a before/after",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --baseline: repeat the ABBA order this many times and print the median "
        "jobs/s per API core of each side (one round varies too much on a shared machine)",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    roots = [("", ROOT)]
    if args.baseline:  # ABBA order, so neither side always runs first on a warming broker
        before, after = ("before: ", args.baseline.resolve()), ("after: ", ROOT)
        roots = [before, after, after, before] * max(1, args.rounds)
    if args.baseline and args.security != "plaintext":
        parser.error("--baseline runs an older checkout, which speaks PLAINTEXT only")
    with broker_connection(args.security) as kafka:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        settings = Settings(kafka_bootstrap=kafka.bootstrap, topic_prefix=prefix, max_queued_jobs=10**9)
        prepare(kafka, settings)
        env = {
            **kafka.env(roles=["api", "replay"]),
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
            "JOBSTREAM_TENANT_MAX_QUEUED_JOBS": str(10**9),  # no worker runs: every job stays waiting
        }
        api_rows = []
        for label, root in roots:
            single_row, batch_row, generator = measure_api(root, env, args)
            api_rows.append((f"{label}POST /v1/jobs, concurrency {args.concurrency}", *single_row))
            api_rows.append((f"{label}POST /v1/jobs:batch (100/request, 4 in flight)", *batch_row))
        with CpuMeter(time.process_time) as ceiling_cpu:  # this process: the producer and librdkafka's threads
            ceiling_rate = ceiling(kafka, settings, args.seconds)
    load_after = os.getloadavg()[0]
    per_core = ceiling_rate / ceiling_cpu.cores
    rows = [("bare confluent-kafka producer (ceiling)", ceiling_rate, None, ceiling_cpu.cores), *api_rows]
    print(
        f"{'path':<56}{'jobs/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'cores':>7}{'jobs/s/core':>13}"
        f"{'of ceiling':>12}{'per core':>10}"
    )
    for name, rate, pct, cores in rows:
        p50, p99 = (f"{pct['p50_ms']:.1f}", f"{pct['p99_ms']:.1f}") if pct else ("", "")
        print(
            f"{name:<56}{rate:>9.0f}{p50:>9}{p99:>9}{cores:>7.2f}{rate / cores:>13.0f}"
            f"{rate / ceiling_rate:>12.1%}{rate / cores / per_core:>10.1%}"
        )
    print(
        f"(single submits generated by {generator}; batch latency is per request of 100 jobs; 'cores' is the CPU"
        " the API process (or, for the ceiling, the producing process) used, all threads; 'per core' compares"
        f" jobs/s per core used with the ceiling's; load average {load_before:.1f} before, {load_after:.1f} after,"
        f" on {os.cpu_count()} cores; Kafka {args.security})"
    )
    if args.baseline:
        print_medians(api_rows)


def print_medians(api_rows: list[tuple]) -> None:
    """Median jobs/s per API core of each side, per path, and after/before."""
    for path in ("POST /v1/jobs,", "POST /v1/jobs:batch"):
        sides = {
            side: [rate / cores for name, rate, _, cores in api_rows if name.startswith(f"{side}: {path}")]
            for side in ("before", "after")
        }
        before, after = statistics.median(sides["before"]), statistics.median(sides["after"])
        spread = {side: f"{min(v):.0f}..{max(v):.0f}" for side, v in sides.items()}
        print(
            f"{path.rstrip(','):<22} median jobs/s/core before {before:.0f} ({spread['before']}),"
            f" after {after:.0f} ({spread['after']}): after/before {after / before:.1%}"
            f" over {len(sides['after'])} measurements each"
        )


if __name__ == "__main__":
    main()
