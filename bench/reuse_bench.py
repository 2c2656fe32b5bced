"""Result reuse: a stream where half the requests repeat an earlier one, with reuse off and on,
side by side in one run; then a thundering herd of one identical request.

    .venv/bin/python -m bench.reuse_bench [--requests 1000] [--concurrency 32] [--n 200000] [--herd 1000]

One real broker and one ``jobstream up`` (API + gateway + sink, one worker process). The stream:
``stats.describe`` of a seeded sample of ``--n`` values; each request is new (a fresh seed) with
probability 1/2, else it repeats an earlier request picked by Zipf-like popularity (rank r with
weight 1/r^1.1 among the distinct requests so far, in order of first appearance). Both phases send
the same stream (with their own seeds, so the second cannot reuse the first's results) from
``--concurrency`` clients in a closed loop: a client posts, waits for the answer — a 200 is the
answer; after a 202 it is the job's terminal event read from ``jobs.events`` — and posts the next.
Reported per phase: answered requests/s, p50/p99 of the time to the answer, jobs the processors
ran, the CPU of the worker and its calculation processes per request, and of the ``up`` process
itself (API, gateway, sink) per request (from ``/proc``).
The herd: ``--herd`` concurrent identical requests with reuse; how many jobs were created.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import Counter

import httpx
import numpy as np

from bench.common import broker, cpu_seconds, descendants, free_port, jobstream_service, percentiles_ms
from bench.processors_bench import Terminals
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics


def stream(requests: int, rng: np.random.Generator) -> list[int]:
    """Request i's identity (0, 1, 2, ... in order of first appearance): half new, half Zipf repeats."""
    out: list[int] = []
    distinct = 0
    for _ in range(requests):
        if distinct == 0 or rng.random() < 0.5:
            out.append(distinct)
            distinct += 1
        else:
            weights = 1.0 / np.arange(1, distinct + 1) ** 1.1
            out.append(int(rng.choice(distinct, p=weights / weights.sum())))
    return out


def job(identity: int, base_seed: int, n: int, reuse: bool) -> dict:
    body: dict = {"kind": "stats.describe", "params": {"generate": {"distribution": "normal", "n": n}}}
    body["params"]["generate"]["seed"] = base_seed + identity
    if reuse:
        body["reuse"] = {"max_age_s": 3600}
    return body


def workers_cpu(up_pid: int) -> float:
    """CPU seconds of ``jobstream up``'s worker processes and their calculation processes."""
    total = 0.0
    for pid in descendants(up_pid):
        try:
            total += cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


async def run_phase(
    url: str, bodies: list[dict], concurrency: int, terminals: Terminals
) -> tuple[float, list[float], dict[int, set[str]], int]:
    """Closed loop: (answers/s, answer latencies, job ids answered per request seed, 200 answers)."""
    latencies: list[float] = []
    ids: dict[int, set[str]] = {}
    hits = 0
    queue = list(reversed(bodies))
    # idle connections go before uvicorn's 5 s keep-alive closes them (a client may wait longer for a job)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def client_loop() -> None:
            nonlocal hits
            while queue:
                body = queue.pop()
                t0 = time.monotonic()
                response = await client.post("/v1/jobs", json=body)
                if response.status_code not in (200, 202):
                    raise RuntimeError(f"{response.status_code}: {response.text}")
                job_id = response.json()["job_id"]
                answered = time.monotonic()
                ids.setdefault(body["params"]["generate"]["seed"], set()).add(job_id)
                if response.status_code == 200:  # the answer itself holds the result
                    hits += 1
                    latencies.append(answered - t0)
                    continue
                while job_id not in terminals.seen:
                    await asyncio.sleep(0.002)  # the bench's own reader thread fills ``seen``
                if job_id in terminals.failed:
                    raise RuntimeError(f"job {job_id} failed: {terminals.failed[job_id]}")
                latencies.append(max(terminals.seen[job_id], answered) - t0)

        started = time.monotonic()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return len(latencies) / (time.monotonic() - started), latencies, ids, hits


async def herd(url: str, size: int, body: dict) -> list[httpx.Response | BaseException]:
    """Every answer, or the client's error (on a saturated machine a request may wait minutes for one
    of the 200 connections: no pool timeout)."""
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200, keepalive_expiry=2)
    timeout = httpx.Timeout(900, pool=None)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        return await asyncio.gather(*(client.post("/v1/jobs", json=body) for _ in range(size)), return_exceptions=True)


def requested_records(bootstrap: str, settings: Settings) -> int:
    from confluent_kafka import Consumer, TopicPartition

    topic = settings.topic(topics.REQUESTED)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1] for p in parts)
    finally:
        consumer.close()


def print_stream(args: argparse.Namespace, identities: list[int], rows: list[tuple]) -> None:
    """The stream phases' table, printed as soon as they ran (a herd that fails keeps them)."""
    distinct = len(set(identities))
    print(
        f"{args.requests} requests per phase, {distinct} distinct ({args.requests - distinct} repeats, Zipf-like), "
        f"stats.describe of {args.n:,} seeded values, {args.concurrency} clients in a closed loop, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        "| reuse | answers/s | p50 ms | p99 ms | jobs run | 200 hits | calculation CPU ms/req | API CPU ms/req "
        "| requests with 2+ jobs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for reuse, rate, pct, jobs, hits, cpu, api, twice in rows:
        print(
            f"| {'on' if reuse else 'off'} | {rate:.1f} | {pct['p50_ms']:.0f} | {pct['p99_ms']:.0f} | {jobs} | "
            f"{hits} | {cpu * 1000:.1f} | {api * 1000:.1f} | {twice if reuse else '-'} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--n", type=int, default=200_000, help="values per sample (the calculation's weight)")
    parser.add_argument("--herd", type=int, default=1000)
    args = parser.parse_args()
    identities = stream(args.requests, np.random.default_rng(16))
    rows = []
    with broker() as bootstrap:
        prefix = f"rub{uuid.uuid4().hex[:6]}."
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
        ensure_topics(KafkaConnection.from_settings(settings), settings)
        env = {
            "KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_WORKERS": "1",
            "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
            "JOBSTREAM_TENANT_MAX_QUEUED_JOBS": str(10**9),  # one tenant submits the whole backlog
        }
        terminals = Terminals(KafkaConnection.from_settings(settings), settings)
        try:
            with jobstream_service(["up", "--log-level", "warning"], env, free_port()) as up:
                asyncio.run(run_phase(up.url, [job(i, 10**9, 1000, False) for i in range(32)], 8, terminals))  # warm
                for reuse, base_seed in ((False, 1), (True, 10**6)):
                    bodies = [job(i, base_seed, args.n, reuse) for i in identities]
                    cpu0, api0 = workers_cpu(up.pid), cpu_seconds(up.pid)
                    rate, latencies, ids, hits = asyncio.run(run_phase(up.url, bodies, args.concurrency, terminals))
                    cpu, api = workers_cpu(up.pid) - cpu0, cpu_seconds(up.pid) - api0
                    n = len(bodies)
                    jobs = sum(len(v) for v in ids.values())
                    twice = sum(len(v) > 1 for v in ids.values())  # requests answered by more than one job
                    rows.append((reuse, rate, percentiles_ms(latencies), jobs, hits, cpu / n, api / n, twice))
                print_stream(args, identities, rows)
                before = requested_records(bootstrap, settings)
                body = job(0, 10**8, args.n * 5, True)  # a slower calculation, so the herd arrives while it runs
                t0, api0 = time.monotonic(), cpu_seconds(up.pid)
                answers = asyncio.run(herd(up.url, args.herd, body))
                herd_s, herd_api = time.monotonic() - t0, cpu_seconds(up.pid) - api0
                created = requested_records(bootstrap, settings) - before
                responses = [a for a in answers if isinstance(a, httpx.Response)]
                herd_ids = {a.json().get("job_id") for a in responses} - {None}
                codes = sorted(Counter(a.status_code for a in responses).items())
                errors = Counter(type(a).__name__ for a in answers if not isinstance(a, httpx.Response))
        finally:
            terminals.close()
    print(
        f"herd: {args.herd} concurrent identical requests with reuse answered in {herd_s:.2f} s "
        f"({herd_api * 1000 / args.herd:.1f} ms API CPU per request), "
        f"status codes (code, count) {codes}, client errors {dict(errors)}, {len(herd_ids)} distinct job id(s), "
        f"{created} request record(s) on "
        f"jobs.requested: calculations run = {created}"
    )


if __name__ == "__main__":
    main()
