"""The whole pipeline's cost per job: single submits versus batch submits, CPU of every server process.

    .venv/bin/python -m bench.pipeline_bench [--jobs 3000] [--values 100] [--in-flight 64] [--batch 100]
        [--rounds 1] [--warmup 48000] [--baseline DIR] [--env NAME=VALUE ...] [--baseline-env NAME=VALUE ...]

One local broker, warmed up first: unmeasured single submits through each checkout in turn until the
broker's JIT compilers are done (under 0.1 ms of their CPU per job in the last pass of a turn; at
most ``--warmup`` jobs). A fresh broker's JIT runs for its first 10,000–20,000 jobs at 0.5–2 ms of CPU per job, more
than its request handling, and would land on whichever checkout came first.

For each round and each checkout (``--baseline`` first, then this one, then
in reverse order on the next round: ABBA), a fresh ``jobstream up`` with one worker on fresh
topics, then two phases of ``--jobs`` ``stats.describe`` jobs of ``--values`` values each, all
submitted at once:

- **single**: one ``POST /v1/jobs`` per job, ``--in-flight`` requests at a time;
- **batch**: ``POST /v1/jobs:batch`` of ``--batch`` jobs, ``--in-flight`` / ``--batch`` (at least 1)
  requests at a time.

Terminal events are read from one ``GET /v1/events?status=succeeded,failed`` stream opened before
the phase (as a client would follow its jobs). Throughput is jobs / (last terminal event read −
first submit); a job's latency runs from the start of its POST to its terminal event's arrival.
Server CPU is the growth of user + system time of ``jobstream up`` and every process below it (the
worker and its calculation processes) plus the broker's JVM, from ``/proc``, over the phase,
divided by the jobs: the bench's own client work is not counted.

``--env`` sets variables for this checkout's ``up`` only (``--baseline-env`` for the baseline's), so
one run can compare a setting (e.g. a producer linger) side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
from httpx_sse import aconnect_sse

from bench.common import (
    ROOT,
    broker_connection,
    broker_pids,
    descendants,
    free_port,
    jobstream_service,
    percentiles_ms,
    prepare,
)
from streams.kafka_config import ROLES, KafkaConnection
from streams.settings import Settings

TERMINAL = ("succeeded", "failed", "cancelled")


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pids: Iterable[int]) -> dict[int, float]:
    return {pid: _cpu_s(pid) for pid in pids}


def jit_cpu_s(pid: int) -> float:
    """CPU time of a JVM's JIT compiler threads ("C1 CompilerThre", "C2 CompilerThre")."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if "CompilerThre" not in (task / "comm").read_text():
                continue
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _name(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    return f"{pid}:" + " ".join(w.decode(errors="replace") for w in words[1:4])


@dataclass
class Phase:
    name: str
    jobs: int
    jobs_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_job: float
    broker_ms_per_job: float
    failed: int


class Terminals:
    """One ``/v1/events`` stream of terminal events, read on its own thread and loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[str, tuple[float, str]] = {}
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._read()), daemon=True)
        self._thread.start()

    async def _read(self) -> None:
        params = {"status": ",".join(TERMINAL)}
        async with httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=None)) as client:
            async with aconnect_sse(client, "GET", "/v1/events", params=params) as source:
                async for sse in source.aiter_sse():
                    if self._stop.is_set():
                        return
                    if sse.event not in TERMINAL:
                        continue
                    job_id = sse.json()["job_id"]
                    with self._changed:
                        self.seen.setdefault(job_id, (time.monotonic(), sse.event))
                        self._changed.notify_all()

    def wait(self, job_ids: Iterable[str], timeout_s: float) -> None:
        wanted = set(job_ids)
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not wanted <= self.seen.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(wanted - self.seen.keys())} jobs had no terminal event")
                self._changed.wait(left)

    def close(self) -> None:
        self._stop.set()


def job(i: int, values: int) -> dict:
    return {"kind": "stats.describe", "params": {"values": [float((i * 7 + k) % 101) for k in range(values)]}}


async def submit_single(url: str, bodies: list[dict], in_flight: int) -> dict[str, float]:
    """``in_flight`` keep-alive connections posting back to back. A bare HTTP/1.1 client on asyncio
    streams, not httpx: httpx costs ~1 ms of CPU per request, which on 2 cores caps the very server
    it measures near 1,000 requests/s."""
    submitted: dict[str, float] = {}
    queue = iter(bodies)
    host, _, port = url.removeprefix("http://").partition(":")
    head = f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"

    async def lane() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for body in queue:
                raw = orjson.dumps(body)
                t0 = time.monotonic()
                writer.write(f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
                headers = await reader.readuntil(b"\r\n\r\n")
                length = int(headers.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                answer = await reader.readexactly(length)
                if not headers.startswith(b"HTTP/1.1 202"):
                    raise RuntimeError(f"{headers[:40]!r}: {answer[:300]!r}")
                submitted[orjson.loads(answer)["job_id"]] = t0
        finally:
            writer.close()

    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return submitted


async def submit_batches(url: str, bodies: list[dict], size: int, in_flight: int) -> dict[str, float]:
    submitted: dict[str, float] = {}
    chunks = iter([bodies[i : i + size] for i in range(0, len(bodies), size)])
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def lane() -> None:
            for chunk in chunks:
                t0 = time.monotonic()
                response = await client.post("/v1/jobs:batch", json={"jobs": chunk})
                if response.status_code != 202 or response.json()["rejected"]:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                submitted.update({item["job_id"]: t0 for item in response.json()["jobs"]})

        await asyncio.gather(*(lane() for _ in range(max(1, in_flight))))
    return submitted


def live_terminals(url: str, values: int) -> Terminals:
    """A terminal-event stream, once live: a job submitted after it opened is seen finishing on it."""
    terminals = Terminals(url)
    deadline = time.monotonic() + 120
    while True:
        probe = asyncio.run(submit_single(url, [job(0, values)], 1))
        try:
            terminals.wait(probe, 5)
            return terminals
        except TimeoutError:
            if time.monotonic() > deadline:
                terminals.close()
                raise


def run_phase(name: str, url: str, up_pid: int, args: argparse.Namespace) -> Phase:
    terminals = live_terminals(url, args.values)
    try:
        bodies = [job(i, args.values) for i in range(args.jobs)]
        processes = [up_pid, *descendants(up_pid)]
        brokers = broker_pids()
        before, broker_before = tree_cpu_s(processes), tree_cpu_s(brokers)
        jit_before = sum(jit_cpu_s(p) for p in brokers)
        if name == "single":
            submitted = asyncio.run(submit_single(url, bodies, args.in_flight))
        else:
            submitted = asyncio.run(submit_batches(url, bodies, args.batch, max(1, args.in_flight // args.batch)))
        terminals.wait(submitted, 600)
        after, broker_after = tree_cpu_s(processes), tree_cpu_s(brokers)
        jit = sum(jit_cpu_s(p) for p in brokers) - jit_before
        first = min(submitted.values())
        arrivals = {j: terminals.seen[j] for j in submitted}
        last = max(t for t, _ in arrivals.values())
        latencies = [arrivals[j][0] - t0 for j, t0 in submitted.items()]
        server = sum(after[p] - before[p] for p in processes) + sum(broker_after[p] - broker_before[p] for p in brokers)
        broker = sum(broker_after[p] - broker_before[p] for p in brokers)
        if args.verbose:
            spent = {_name(p): round((after[p] - before[p]) * 1000 / len(submitted), 3) for p in processes}
            print(
                f"  {name}: server CPU ms/job by process {spent}, broker {broker * 1000 / len(submitted):.3f} "
                f"(of which JIT compilers {jit * 1000 / len(submitted):.3f})"
            )
        q = percentiles_ms(latencies)
        return Phase(
            name,
            len(submitted),
            len(submitted) / (last - first),
            q["p50_ms"],
            q["p99_ms"],
            server * 1000 / len(submitted),
            broker * 1000 / len(submitted),
            sum(1 for _, status in arrivals.values() if status != "succeeded"),
        )
    finally:
        terminals.close()


def up_env(kafka: KafkaConnection, env: dict[str, str]) -> dict[str, str]:
    """Fresh topics and the environment of a ``jobstream up`` with one worker on them."""
    prefix = f"pl{uuid.uuid4().hex[:6]}."
    prepare(kafka, Settings(kafka_bootstrap=kafka.bootstrap, topic_prefix=prefix))
    return {
        **kafka.env(roles=ROLES),
        "JOBSTREAM_TOPIC_PREFIX": prefix,
        "JOBSTREAM_WORKERS": "1",
        "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
        **env,
    }


Checkout = tuple[str, Path, dict[str, str]]  #: label, root, environment of its ``up``


WARMUP_PASS = 3000  #: jobs per warm-up pass


def warm_up(kafka: KafkaConnection, args: argparse.Namespace, checkouts: list[Checkout]) -> None:
    """Unmeasured single submits, 3,000 at a time (64 in flight) through each checkout in turn, until the
    broker's JIT compilers spent under 0.1 ms per job in the last pass of a turn (or ``--warmup`` jobs
    went through): whole turns, so every checkout has had as many passes."""
    brokers, started, done = broker_pids(), time.monotonic(), 0
    while done < args.warmup:
        for _, root, env in checkouts:
            jit_before = sum(jit_cpu_s(p) for p in brokers)
            with jobstream_service(["up", "--log-level", "warning"], up_env(kafka, env), free_port(), root=root) as up:
                terminals = live_terminals(up.url, args.values)
                try:
                    bodies = [job(i, args.values) for i in range(WARMUP_PASS)]
                    terminals.wait(asyncio.run(submit_single(up.url, bodies, 64)), 600)
                finally:
                    terminals.close()
            done += WARMUP_PASS
            jit_ms = (sum(jit_cpu_s(p) for p in brokers) - jit_before) * 1000 / WARMUP_PASS
            print(f"warm-up: {done} jobs, {time.monotonic() - started:.0f} s, the broker's JIT {jit_ms:.3f} ms/job")
        if jit_ms < 0.1:
            return


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per phase")
    parser.add_argument("--values", type=int, default=100, help="values per stats.describe job")
    parser.add_argument("--in-flight", type=int, default=64, help="single submits in flight")
    parser.add_argument("--batch", type=int, default=100, help="jobs per POST /v1/jobs:batch")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (ABBA order with --baseline)")
    parser.add_argument("--warmup", type=int, default=48_000, help="most unmeasured jobs first (0: none)")
    parser.add_argument("--baseline", type=Path, help="another checkout run side by side (before)")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for this checkout's up")
    parser.add_argument("--baseline-env", action="append", default=[], help="NAME=VALUE for the baseline's up")
    parser.add_argument("--verbose", action="store_true", help="print each phase's CPU by process")
    args = parser.parse_args()
    checkouts: list[Checkout] = [("after", ROOT, parse_env(args.env))]
    if args.baseline:
        checkouts.insert(0, ("before", args.baseline.resolve(), parse_env(args.baseline_env)))
    elif args.baseline_env:
        # the same checkout twice, the settings side by side
        checkouts.insert(0, ("before", ROOT, parse_env(args.baseline_env)))
    results: dict[str, list[Phase]] = {label: [] for label, _, _ in checkouts}
    load = [os.getloadavg()[0]]
    with broker_connection() as kafka:
        if args.warmup:
            warm_up(kafka, args, checkouts)
        for round_ in range(args.rounds):
            order = checkouts if round_ % 2 == 0 else list(reversed(checkouts))
            for label, root, env in order:
                command = ["up", "--log-level", "warning"]
                with jobstream_service(command, up_env(kafka, env), free_port(), root=root) as up:
                    asyncio.run(submit_batches(up.url, [job(i, args.values) for i in range(200)], 100, 1))
                    for name in ("single", "batch"):
                        try:
                            phase = run_phase(name, up.url, up.pid, args)
                        except Exception:
                            print(Path(f"/proc/{up.pid}/fd/2").read_text()[-3000:])  # the server's log
                            raise
                        results[label].append(phase)
                        print(f"round {round_ + 1} {label} {name}: {phase}", flush=True)
                load.append(os.getloadavg()[0])
    print(f"\nload average (1 min) {' → '.join(f'{v:.1f}' for v in load)}")
    print("| checkout | path | jobs/s | p50 ms | p99 ms | server CPU ms/job | of which broker | failed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, phases in results.items():
        for name in ("single", "batch"):
            mine = [p for p in phases if p.name == name]
            print(
                f"| {label} | {name} | {np.mean([p.jobs_per_s for p in mine]):,.0f} "
                f"| {np.mean([p.p50_ms for p in mine]):,.0f} | {np.mean([p.p99_ms for p in mine]):,.0f} "
                f"| {np.mean([p.cpu_ms_per_job for p in mine]):.3f} "
                f"| {np.mean([p.broker_ms_per_job for p in mine]):.3f} | {sum(p.failed for p in mine)} |"
            )
    if len(results) == 2:
        before, after = results["before"], results["after"]
        for name in ("single", "batch"):
            b = [p for p in before if p.name == name]
            a = [p for p in after if p.name == name]
            ratio = np.mean([p.jobs_per_s for p in a]) / np.mean([p.jobs_per_s for p in b])
            cpu = np.mean([p.cpu_ms_per_job for p in a]) / np.mean([p.cpu_ms_per_job for p in b])
            print(f"{name}: after/before throughput {ratio:.2f}x, CPU per job {cpu:.2f}x")


if __name__ == "__main__":
    main()
