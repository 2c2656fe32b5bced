"""End-to-end processing throughput and latency, batching off (BATCH_MAX_SIZE=1) versus adaptive.

    .venv/bin/python -m bench.processors_bench [--small 4000] [--montecarlo 1000] [--rates 40,400] [--seconds 10]

In one run, against one real broker, for each configuration a whole pipeline
(`jobstream up`: API + SSE gateway + ClickHouse sink in one process, one worker
process with its calculation processes) on fresh topics:

1. burst of ``--small`` small ``stats.describe`` jobs submitted as fast as the API
   takes them (``POST /v1/jobs:batch``, 500 per request);
2. burst of ``--montecarlo`` ``montecarlo.var`` jobs (3 assets, 50,000 paths);
3. steady load at each of ``--rates`` small jobs per second for ``--seconds``, one
   ``POST /v1/jobs`` each, open loop (the latency a job sees below saturation).

Throughput is jobs / (last terminal event seen − first submit); a job's latency
is from the moment its POST started to the moment its terminal event was read
from ``jobs.events`` by this process.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
from confluent_kafka import Consumer

from bench.common import broker, free_port, jobstream_process, percentiles_ms
from streams import topics
from streams.events import load_event
from streams.kafka_config import consumer_config
from streams.settings import Settings
from streams.topics import ensure_topics

SUBMIT_CHUNK = 500
MONTECARLO = {"weights": [0.5, 0.3, 0.2], "mu": [0.0005, 0.0003, 0.0002],
              "cov": [[0.0004, 0.0001, 0.0], [0.0001, 0.0003, 0.0], [0.0, 0.0, 0.0002]],
              "horizon_days": 10, "paths": 50_000, "confidence": 0.99}
CONFIGS = {"batching off (BATCH_MAX_SIZE=1)": "1", "adaptive (BATCH_MAX_SIZE=64)": "64"}


def small_job(i: int) -> dict:
    return {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0, float(i % 100)]}}


def montecarlo_job(i: int) -> dict:
    return {"kind": "montecarlo.var", "params": {**MONTECARLO, "seed": i}}


class Terminals:
    """Reads jobs.events on a thread: when each job's terminal event arrived, and batch sizes."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.seen: dict[str, float] = {}
        self.batch_sizes: dict[str, int] = {}
        self.failed: dict[str, dict] = {}
        self._consumer = Consumer(consumer_config(bootstrap, f"bench-{uuid.uuid4().hex}", settings))
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
                event = load_event(message.value())
                if event.type.value == "running":
                    self.batch_sizes.setdefault(event.job_id, int(event.data.get("batch_size", 1)))
                elif event.terminal and event.job_id not in self.seen:
                    self.seen[event.job_id] = now
                    if event.type.value != "succeeded":
                        self.failed[event.job_id] = event.data

    def wait(self, ids: list[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while any(j not in self.seen for j in ids):
            if time.monotonic() > deadline:
                missing = sum(j not in self.seen for j in ids)
                raise RuntimeError(f"{missing} of {len(ids)} jobs did not finish within {timeout_s}s")
            time.sleep(0.05)  # bench only: polling a dict another thread fills

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


@dataclass
class Result:
    name: str
    jobs: int
    seconds: float
    latencies: list[float]
    batch_sizes: list[int] = field(default_factory=list)
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def row(self) -> dict[str, float]:
        pct = percentiles_ms(self.latencies)
        return {"jobs/s": self.rate, **pct, "mean batch": float(np.mean(self.batch_sizes or [0])),
                "max batch": float(max(self.batch_sizes or [0])), "failed": self.failed}


def burst(url: str, terminals: Terminals, jobs: list[dict], name: str, timeout_s: float) -> Result:
    submitted: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(jobs), SUBMIT_CHUNK):
            t0 = time.monotonic()
            response = client.post("/v1/jobs:batch", json={"jobs": jobs[start:start + SUBMIT_CHUNK]})
            if response.status_code != 202 or response.json()["rejected"]:
                raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
            submitted.update({item["job_id"]: t0 for item in response.json()["jobs"]})
    ids = list(submitted)
    terminals.wait(ids, timeout_s)
    first = min(submitted.values())
    last = max(terminals.seen[j] for j in ids)
    return Result(name, len(ids), last - first, [terminals.seen[j] - submitted[j] for j in ids],
                  [terminals.batch_sizes.get(j, 0) for j in ids], sum(j in terminals.failed for j in ids))


async def steady(url: str, terminals: Terminals, rate: float, seconds: float, timeout_s: float) -> Result:
    submitted: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def one(i: int) -> None:
            t0 = time.monotonic()
            response = await client.post("/v1/jobs", json=small_job(i))
            if response.status_code != 202:
                raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
            submitted[response.json()["job_id"]] = t0

        started = time.monotonic()
        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))  # open loop, fixed rate
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    ids = list(submitted)
    await asyncio.to_thread(terminals.wait, ids, timeout_s)
    return Result(f"steady {rate:g}/s", len(ids), seconds, [terminals.seen[j] - submitted[j] for j in ids],
                  [terminals.batch_sizes.get(j, 0) for j in ids], sum(j in terminals.failed for j in ids))


def run_config(bootstrap: str, batch_max_size: str, args: argparse.Namespace) -> list[Result]:
    prefix = f"pb{uuid.uuid4().hex[:6]}."
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    ensure_topics(bootstrap, settings)
    env = {"KAFKA_BOOTSTRAP": bootstrap, "JOBSTREAM_TOPIC_PREFIX": prefix, "JOBSTREAM_BATCH_MAX_SIZE": batch_max_size,
           "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9), "JOBSTREAM_WORKERS": "1"}
    terminals = Terminals(bootstrap, settings)
    try:
        with jobstream_process(["up", "--log-level", "warning"], env, free_port()) as url:
            burst(url, terminals, [small_job(i) for i in range(50)] + [montecarlo_job(i) for i in range(10)],
                  "warm-up", 300)
            return [
                burst(url, terminals, [small_job(i) for i in range(args.small)], "stats.describe burst", 900),
                burst(url, terminals, [montecarlo_job(i) for i in range(args.montecarlo)], "montecarlo.var burst",
                      900),
                *(asyncio.run(steady(url, terminals, rate, args.seconds, 300)) for rate in args.rates),
            ]
    finally:
        terminals.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000, help="stats.describe jobs in the burst")
    parser.add_argument("--montecarlo", type=int, default=1000, help="montecarlo.var jobs in the burst")
    parser.add_argument("--rates", type=lambda v: [float(r) for r in v.split(",")], default=[40.0, 400.0],
                        help="jobs/s of the steady phases, comma-separated")
    parser.add_argument("--seconds", type=float, default=10, help="length of the steady phase")
    args = parser.parse_args()
    results: dict[str, list[Result]] = {}
    with broker() as bootstrap:
        for name, size in CONFIGS.items():
            results[name] = run_config(bootstrap, size, args)
    header = "| workload | configuration | jobs/s | p50 ms | p99 ms | mean batch | max batch | failed |"
    print(header)
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    baseline = {r.name: r for r in results[next(iter(CONFIGS))]}
    for name, rows in results.items():
        for result in rows:
            row = result.row()
            print(f"| {result.name} | {name} | {row['jobs/s']:.0f} | {row['p50_ms']:.0f} | {row['p99_ms']:.0f} | "
                  f"{row['mean batch']:.1f} | {row['max batch']:.0f} | {row['failed']:.0f} |")
    adaptive = {r.name: r for r in results[list(CONFIGS)[1]]}
    for workload in ("stats.describe burst", "montecarlo.var burst"):
        speedup = adaptive[workload].rate / baseline[workload].rate
        p99 = (percentiles_ms(adaptive[workload].latencies)["p99_ms"],
               percentiles_ms(baseline[workload].latencies)["p99_ms"])
        print(f"{workload}: adaptive batching = {speedup:.1f}x the throughput of batching off; "
              f"p99 {p99[0]:.0f} ms vs {p99[1]:.0f} ms")


if __name__ == "__main__":
    main()
