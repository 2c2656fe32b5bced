"""Processing throughput and latency, batching off (BATCH_MAX_SIZE=1) versus adaptive.

    .venv/bin/python -m bench.processors_bench [--small 4000] [--montecarlo 1000] [--rates 40,400] [--seconds 10]
        [--via kafka|api] [--configs 1,64] [--profile PREFIX] [--baseline DIR]

In one run, against one real broker, for each configuration a fresh worker on fresh topics:

1. burst of ``--small`` small ``stats.describe`` jobs (4 values each);
2. burst of ``--montecarlo`` ``montecarlo.var`` jobs (3 assets, 50,000 paths);
3. steady load at each of ``--rates`` small jobs per second for ``--seconds``, open loop.

``--via kafka`` (the default) measures the processors: one ``jobstream worker``
process (its calculation processes, one per core) and nothing else of the
pipeline; the bench produces the ``JobRequested`` records straight onto
``jobs.requested`` (built before the clock starts; a burst is produced in one
go) and reads ``jobs.events``. ``--via api`` runs the whole pipeline
(``jobstream up``: API + SSE gateway + ClickHouse sink in one process, one worker
process) and submits over HTTP (bursts as ``POST /v1/jobs:batch`` of 500, steady
load as one ``POST /v1/jobs`` each): on 2 cores the API and the sink then cap
what the worker can show.

Throughput is jobs / (last terminal event read − first submit); a job's latency
runs from its submit (produce, or the start of its POST) to the moment its
terminal event was read from ``jobs.events`` by this process. ``--profile``
samples the worker with py-spy (not a project dependency) during each burst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
from confluent_kafka import Consumer, Producer

from bench.common import (
    ROOT,
    SECURITY_CHOICES,
    broker_connection,
    code_env,
    free_port,
    jobstream_process,
    percentiles_ms,
    prepare,
)
from streams import topics
from streams.events import JobRequested, new_job_id
from streams.kafka_config import ROLES, KafkaConnection
from streams.settings import Settings
from streams.wire import dumps

SUBMIT_CHUNK = 500
MONTECARLO = {
    "weights": [0.5, 0.3, 0.2],
    "mu": [0.0005, 0.0003, 0.0002],
    "cov": [[0.0004, 0.0001, 0.0], [0.0001, 0.0003, 0.0], [0.0, 0.0, 0.0002]],
    "horizon_days": 10,
    "paths": 50_000,
    "confidence": 0.99,
}
CONFIGS = {"1": "batching off (BATCH_MAX_SIZE=1)", "64": "adaptive (BATCH_MAX_SIZE=64)"}
_PROGRESS = b'"type":"progress"'
_RUNNING = b'"type":"running"'


def small_job(i: int) -> dict:
    return {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0, float(i % 100)]}}


def montecarlo_job(i: int) -> dict:
    return {"kind": "montecarlo.var", "params": {**MONTECARLO, "seed": i}}


class Terminals:
    """Reads jobs.events on a thread: when each job's terminal event arrived, and batch sizes.

    Parses only what it needs (progress events are skipped by a byte test), so the
    reader costs the shared cores as little as possible.
    """

    def __init__(self, kafka: KafkaConnection, settings: Settings) -> None:
        self.seen: dict[str, float] = {}
        self.batch_sizes: dict[str, int] = {}
        self.failed: dict[str, dict] = {}
        # the bench's own reader (not a jobstream role): the admin principal on a secured broker
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
                if _RUNNING in value:
                    self.batch_sizes.setdefault(job_id, int(event["data"].get("batch_size", 1)))
                elif event["type"] in ("succeeded", "failed", "cancelled") and job_id not in self.seen:
                    self.seen[job_id] = now
                    if event["type"] != "succeeded":
                        self.failed[job_id] = event["data"]

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
    cpu_us: tuple[float, ...] | None = None  #: CPU per job: worker, calculation processes, worker's loop, broker

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def row(self) -> dict[str, float]:
        pct = percentiles_ms(self.latencies)
        return {
            "jobs/s": self.rate,
            **pct,
            "mean batch": float(np.mean(self.batch_sizes or [0])),
            "max batch": float(max(self.batch_sizes or [0])),
            "failed": self.failed,
        }


def _cpu_s(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of one process (or one of its threads) so far (Linux /proc)."""
    try:
        stat = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
        fields = Path(stat).read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def _java_children() -> list[int]:
    """The local broker (a JVM this process started), if any."""
    found = []
    for pid in _children(os.getpid()):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "java":
                found.append(pid)
        except OSError:
            continue
    return found


@contextlib.contextmanager
def cpu_meter(pid: int | None) -> Iterator[list[float]]:
    """CPU seconds spent during the block by the worker process, its calculation processes, its
    event-loop thread, and the local broker."""
    spent = [0.0, 0.0, 0.0, 0.0]
    if pid is None:
        yield spent
        return
    children, brokers = _children(pid), _java_children()
    before = (_cpu_s(pid), sum(_cpu_s(c) for c in children), _cpu_s(pid, pid), sum(_cpu_s(b) for b in brokers))
    yield spent
    after = (_cpu_s(pid), sum(_cpu_s(c) for c in children), _cpu_s(pid, pid), sum(_cpu_s(b) for b in brokers))
    spent[:] = [a - b for a, b in zip(after, before, strict=False)]


def _result(name: str, terminals: Terminals, submitted: dict[str, float], seconds: float | None) -> Result:
    ids = list(submitted)
    if seconds is None:  # a burst: until its last terminal event
        seconds = max(terminals.seen[j] for j in ids) - min(submitted.values())
    return Result(
        name,
        len(ids),
        seconds,
        [terminals.seen[j] - submitted[j] for j in ids],
        [terminals.batch_sizes.get(j, 0) for j in ids],
        sum(j in terminals.failed for j in ids),
    )


# --- submitting over Kafka (the processors alone) ---------------------------------------------------
class KafkaSubmitter:
    """Produces ``JobRequested`` records (the API's wire format) straight onto jobs.requested."""

    def __init__(self, kafka: KafkaConnection, settings: Settings) -> None:
        self._failures: list[str] = []
        self._producer = Producer(
            kafka.for_role("api").producer_config(  # writes requests, as the API does
                on_delivery=lambda err, _msg: self._failures.append(str(err)) if err else None,
                **{"message.timeout.ms": 300_000},  # a burst on a loaded machine may wait long for its acks
            )
        )
        self._topic = settings.topic(topics.REQUESTED)

    @staticmethod
    def records(jobs: list[dict]) -> list[tuple[bytes, bytes]]:
        out = []
        for job in jobs:
            request = JobRequested(job_id=new_job_id(), kind=job["kind"], params=job["params"])
            out.append((request.job_id.encode(), dumps(request)))
        return out

    def burst(self, jobs: list[dict]) -> dict[str, float]:
        records = self.records(jobs)  # built before the clock starts
        t0 = time.monotonic()
        for key, value in records:
            self._producer.produce(self._topic, key=key, value=value)
        self._flush()
        return {key.decode(): t0 for key, _ in records}

    def paced(self, jobs: list[dict], rate: float) -> dict[str, float]:
        records = self.records(jobs)
        submitted: dict[str, float] = {}
        started = time.monotonic()
        for i, (key, value) in enumerate(records):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))  # open loop, fixed rate
            submitted[key.decode()] = time.monotonic()
            self._producer.produce(self._topic, key=key, value=value)
            self._producer.poll(0)
        self._flush()
        return submitted

    def _flush(self) -> None:
        if self._producer.flush(60) or self._failures:
            raise RuntimeError(f"requests not acknowledged by Kafka: {self._failures[:3]}")


@contextlib.contextmanager
def worker_process(env: dict[str, str], root: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    """One ``jobstream worker`` of checkout ``root`` for the block's lifetime (readiness: the warm-up jobs finish)."""
    with tempfile.TemporaryDirectory(prefix="jobstream-bench-") as tmp:
        full_env = {**os.environ, "JOBSTREAM_DATA_DIR": tmp, **code_env(root), **env}
        with open(Path(tmp) / "log", "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "jobstream.cli", "worker", "--log-level", "warning"],
                env=full_env,
                cwd=root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            yield process
        except Exception:
            sys.stderr.write((Path(tmp) / "log").read_text(errors="replace")[-3000:])
            raise
        finally:
            process.terminate()
            process.wait(timeout=60)


@contextlib.contextmanager
def profiled(pid: int | None, prefix: str | None, name: str) -> Iterator[None]:
    """py-spy samples process ``pid`` for the block (a raw collapsed-stack file per phase)."""
    if not prefix or pid is None:
        yield
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = f"{prefix}-{name.replace(' ', '_')}.txt"
    process = subprocess.Popen(
        [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "--gil", "--nonblocking", "-o", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        process.send_signal(2)
        process.wait(timeout=30)


def run_via_kafka(
    kafka: KafkaConnection,
    settings: Settings,
    env: dict[str, str],
    terminals: Terminals,
    args: argparse.Namespace,
    tag: str,
    root: Path,
    sync: Callable[[], object] = lambda: None,
) -> list[Result]:
    submitter = KafkaSubmitter(kafka, settings)

    def burst(jobs: list[dict], name: str, pid: int | None = None) -> Result:
        sync()  # --side-by-side: both checkouts start each phase together
        with profiled(pid, args.profile, f"{tag}-{root.name}-{name}"), cpu_meter(pid) as cpu:
            submitted = submitter.burst(jobs)
            terminals.wait(list(submitted), 900)
        result = _result(name, terminals, submitted, None)
        result.cpu_us = tuple(x / len(jobs) * 1e6 for x in cpu)
        return result

    with worker_process(env, root) as worker:
        burst([small_job(i) for i in range(50)] + [montecarlo_job(i) for i in range(10)], "warm-up")
        results = [
            burst([small_job(i) for i in range(args.small)], "stats.describe burst", worker.pid),
            burst([montecarlo_job(i) for i in range(args.montecarlo)], "montecarlo.var burst", worker.pid),
        ]
        for rate in args.rates:
            sync()
            submitted = submitter.paced([small_job(i) for i in range(int(rate * args.seconds))], rate)
            terminals.wait(list(submitted), 300)
            results.append(_result(f"steady {rate:g}/s", terminals, submitted, args.seconds))
        return results


# --- submitting over HTTP (the whole pipeline) ------------------------------------------------------
def http_burst(url: str, terminals: Terminals, jobs: list[dict], name: str, timeout_s: float) -> Result:
    submitted: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for start in range(0, len(jobs), SUBMIT_CHUNK):
            t0 = time.monotonic()
            response = client.post("/v1/jobs:batch", json={"jobs": jobs[start : start + SUBMIT_CHUNK]})
            if response.status_code != 202 or response.json()["rejected"]:
                raise RuntimeError(f"{response.status_code}: {response.text[:500]}")
            submitted.update({item["job_id"]: t0 for item in response.json()["jobs"]})
    terminals.wait(list(submitted), timeout_s)
    return _result(name, terminals, submitted, None)


async def http_steady(url: str, terminals: Terminals, rate: float, seconds: float, timeout_s: float) -> Result:
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
    await asyncio.to_thread(terminals.wait, list(submitted), timeout_s)
    return _result(f"steady {rate:g}/s", terminals, submitted, seconds)


def run_via_api(env: dict[str, str], terminals: Terminals, args: argparse.Namespace, root: Path) -> list[Result]:
    with jobstream_process(
        ["up", "--log-level", "warning"], {**env, "JOBSTREAM_WORKERS": "1"}, free_port(), root=root
    ) as url:
        http_burst(
            url, terminals, [small_job(i) for i in range(50)] + [montecarlo_job(i) for i in range(10)], "warm-up", 300
        )
        return [
            http_burst(url, terminals, [small_job(i) for i in range(args.small)], "stats.describe burst", 900),
            http_burst(
                url, terminals, [montecarlo_job(i) for i in range(args.montecarlo)], "montecarlo.var burst", 900
            ),
            *(asyncio.run(http_steady(url, terminals, rate, args.seconds, 300)) for rate in args.rates),
        ]


def run_config(
    kafka: KafkaConnection,
    batch_max_size: str,
    args: argparse.Namespace,
    root: Path = ROOT,
    sync: Callable[[], object] = lambda: None,
) -> list[Result]:
    prefix = f"pb{uuid.uuid4().hex[:6]}."
    settings = Settings(kafka_bootstrap=kafka.bootstrap, topic_prefix=prefix)
    prepare(kafka, settings)
    # a worker alone logs in as the worker role; `jobstream up` (--via api) gets every role's login
    env = {
        **(kafka.env(roles=ROLES) if args.via == "api" else kafka.for_role("worker").env()),
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_BATCH_MAX_SIZE": batch_max_size,
        "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
        "JOBSTREAM_TENANT_MAX_QUEUED_JOBS": str(10**9),  # one tenant submits the whole backlog
    }
    terminals = Terminals(kafka, settings)
    try:
        if args.via == "api":
            return run_via_api(env, terminals, args, root)
        return run_via_kafka(kafka, settings, env, terminals, args, f"batch{batch_max_size}", root, sync)
    finally:
        terminals.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=4000, help="stats.describe jobs in the burst")
    parser.add_argument("--montecarlo", type=int, default=1000, help="montecarlo.var jobs in the burst")
    parser.add_argument(
        "--rates",
        type=lambda v: [float(r) for r in v.split(",")],
        default=[40.0, 400.0],
        help="jobs/s of the steady phases, comma-separated",
    )
    parser.add_argument("--seconds", type=float, default=10, help="length of the steady phase")
    parser.add_argument(
        "--via",
        choices=("kafka", "api"),
        default="kafka",
        help="kafka: requests produced straight to the worker (default); api: the whole pipeline",
    )
    parser.add_argument(
        "--configs",
        type=lambda v: v.split(","),
        default=list(CONFIGS),
        help="JOBSTREAM_BATCH_MAX_SIZE values to compare, comma-separated (default 1,64)",
    )
    parser.add_argument(
        "--profile",
        help="sample the worker with py-spy during each burst into this file prefix "
        "(--via kafka only; needs py-spy, not a project dependency)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. a git worktree of the previous "
        "commit): each configuration runs its worker first, then this checkout's, in one run",
    )
    parser.add_argument(
        "--candidate",
        type=Path,
        help="the checkout run after --baseline (default: this one); e.g. swap the two for ABBA order, "
        "or pass the baseline again for an A/A run that shows the order's own effect",
    )
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="with --baseline (--via kafka): run both checkouts' workers at the same time, each phase "
        "started together, so both see the same machine load (the broker's CPU is then shared)",
    )
    parser.add_argument(
        "--security",
        choices=SECURITY_CHOICES,
        default="plaintext",
        help="sasl_ssl: a secured local broker (SCRAM over TLS, per-role ACLs) to price transport security",
    )
    args = parser.parse_args()
    if args.baseline and args.security != "plaintext":
        parser.error("--baseline runs an older checkout, which speaks PLAINTEXT only")
    results: dict[str, list[Result]] = {}
    labels: dict[str, str] = {}
    load = [os.getloadavg()[0]]
    candidate = (args.candidate or ROOT).resolve()
    roots = [("before", args.baseline.resolve()), ("after", candidate)] if args.baseline else [("", candidate)]
    with broker_connection(args.security) as kafka:
        for size in args.configs:
            keys = []
            for label, _ in roots:
                keys.append(key := f"{label}:{size}")
                labels[key] = f"{label}: {CONFIGS.get(size, f'BATCH_MAX_SIZE={size}')}".lstrip(": ")
            if args.side_by_side and len(roots) == 2:
                barrier = threading.Barrier(2, timeout=900)

                def side(root: Path, size: str = size, barrier: threading.Barrier = barrier) -> list[Result]:
                    try:
                        return run_config(kafka, size, args, root, barrier.wait)
                    except BaseException:
                        barrier.abort()  # the other side stops waiting for this one
                        raise

                with ThreadPoolExecutor(2) as pool:
                    futures = [pool.submit(side, root) for _, root in roots]
                    for key, future in zip(keys, futures, strict=True):
                        results[key] = future.result()
            else:
                for key, (_, root) in zip(keys, roots, strict=True):
                    results[key] = run_config(kafka, size, args, root)
            load.append(os.getloadavg()[0])
    print(f"via {args.via}; Kafka {args.security}; load average (1 min) {' → '.join(f'{x:.1f}' for x in load)}")
    print(
        "| workload | configuration | jobs/s | p50 ms | p99 ms | mean batch | max batch | failed "
        "| CPU µs/job: worker (its loop) | calculations | broker |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, rows in results.items():
        for result in rows:
            row = result.row()
            cpu = (
                [
                    f"{result.cpu_us[0]:,.0f} ({result.cpu_us[2]:,.0f})",
                    f"{result.cpu_us[1]:,.0f}",
                    f"{result.cpu_us[3]:,.0f}",
                ]
                if result.cpu_us
                else ["", "", ""]
            )
            print(
                f"| {result.name} | {labels[key]} | {row['jobs/s']:,.0f} | "
                f"{row['p50_ms']:,.0f} | {row['p99_ms']:,.0f} | {row['mean batch']:.1f} | {row['max batch']:.0f} | "
                f"{row['failed']:.0f} | {cpu[0]} | {cpu[1]} | {cpu[2]} |"
            )
    if len(results) < 2:
        return
    keys = list(results)
    pairs = [(keys[i], keys[i + 1]) for i in range(0, len(keys) - 1, 2)] if args.baseline else [(keys[0], keys[1])]
    for first, second in pairs:
        base, other = ({r.name: r for r in results[k]} for k in (first, second))
        for workload in ("stats.describe burst", "montecarlo.var burst"):
            speedup = other[workload].rate / base[workload].rate
            p99 = (
                percentiles_ms(other[workload].latencies)["p99_ms"],
                percentiles_ms(base[workload].latencies)["p99_ms"],
            )
            print(
                f"{workload}: {labels[second]} vs {labels[first]}: {speedup:.2f}x the throughput; "
                f"p99 {p99[0]:,.0f} ms vs {p99[1]:,.0f} ms"
            )


if __name__ == "__main__":
    main()
