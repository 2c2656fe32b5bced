"""Does a replay leave production latency alone? Production p50/p99 with nothing extra, with a
replay, and with the same extra rate of ordinary submits, side by side in one run.

    .venv/bin/python -m bench.replay_bench [--history 8000] [--rate 40] [--seconds 15] [--replay-rates 100,400]

One real broker and one ``jobstream up`` (API + gateway + sink in one process, one worker
process). First ``--history`` small ``stats.describe`` jobs run to completion (the history).
Then, per phase, ``--rate`` production jobs/s are submitted (one ``POST /v1/jobs`` each, open
loop) for ``--seconds``; during each replay phase a replay of the history runs at that rate.
A production job's latency is from its POST to its terminal event read from ``jobs.events``.
The replay's achieved rate is jobs emitted / phase length; each replay is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

import httpx

from bench.common import broker, free_port, jobstream_process, percentiles_ms
from bench.processors_bench import Terminals
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics


def small_job(i: int) -> dict:
    return {"kind": "stats.describe", "params": {"values": [1.0, 2.0, 3.0, float(i % 100)]}}


async def production(url: str, rate: float, seconds: float, extra_rate: float = 0.0) -> dict[str, float]:
    """Submit ``rate`` jobs/s for ``seconds`` (and, unmeasured, ``extra_rate`` more in batches every
    100 ms: the same load as a replay, as ordinary traffic); returns job id -> submit time."""
    submitted: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(i: int) -> None:
            t0 = time.monotonic()
            response = await client.post("/v1/jobs", json=small_job(i))
            response.raise_for_status()
            submitted[response.json()["job_id"]] = t0

        async def extra() -> None:
            per_tick = max(1, round(extra_rate / 10))
            for tick in range(int(seconds * 10)):
                await asyncio.sleep(max(0.0, started + tick / 10 - time.monotonic()))
                jobs = [small_job(i) for i in range(per_tick)]
                (await client.post("/v1/jobs:batch", json={"jobs": jobs})).raise_for_status()

        started = time.monotonic()
        tasks = [asyncio.ensure_future(extra())] if extra_rate else []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))  # open loop, fixed rate
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    return submitted


def drained(replay: dict) -> bool:
    outcomes = replay.get("outcomes") or {}
    return (
        replay["state"] in ("stopped", "completed")
        and outcomes.get("pending") == 0
        and sum(outcomes.values()) == replay["emitted"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=8000, help="jobs in the history that replays re-run")
    parser.add_argument("--rate", type=float, default=40, help="production jobs/s")
    parser.add_argument("--seconds", type=float, default=15, help="length of each phase")
    parser.add_argument("--replay-rates", type=lambda v: [float(r) for r in v.split(",")], default=[100.0, 400.0])
    args = parser.parse_args()
    rows = []
    with broker() as bootstrap:
        prefix = f"rb{uuid.uuid4().hex[:6]}."
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
        ensure_topics(KafkaConnection.from_settings(settings), settings)
        env = {
            "KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_WORKERS": "1",
            "JOBSTREAM_MAX_QUEUED_JOBS": str(10**9),
            "JOBSTREAM_REPLAY_MAX_RATE": "100000",
        }
        finished = Terminals(bootstrap, settings)
        try:
            with (
                jobstream_process(["up", "--log-level", "warning"], env, free_port()) as url,
                httpx.Client(base_url=url, timeout=120) as client,
            ):
                since = datetime.now(UTC)
                ids: list[str] = []
                for start in range(0, args.history, 500):
                    jobs = [small_job(i) for i in range(start, min(args.history, start + 500))]
                    ids += [j["job_id"] for j in client.post("/v1/jobs:batch", json={"jobs": jobs}).json()["jobs"]]
                finished.wait(ids, 600)
                until = datetime.now(UTC)
                phases = [("none", 0.0)] + [(kind, r) for r in args.replay_rates for kind in ("replay", "traffic")]
                for extra, replay_rate in phases:
                    replay_id = None
                    if extra == "replay":
                        body = {"since": since.isoformat(), "until": until.isoformat(), "rate": replay_rate}
                        replay_id = client.post("/v1/replays", json=body).json()["replay_id"]
                    started = time.monotonic()
                    submitted = asyncio.run(
                        production(url, args.rate, args.seconds, replay_rate if extra == "traffic" else 0.0)
                    )
                    emitted = 0
                    if replay_id:
                        emitted = client.get(f"/v1/replays/{replay_id}").json()["emitted"]
                        elapsed = time.monotonic() - started
                        client.post(f"/v1/replays/{replay_id}:stop")
                    finished.wait(list(submitted), 300)
                    latencies = [finished.seen[j] - t for j, t in submitted.items()]
                    pct = percentiles_ms(latencies)
                    achieved = emitted / elapsed if replay_id else replay_rate
                    rows.append((extra, replay_rate, achieved, pct, len(submitted)))
                    if replay_id:  # let every replayed job finish (and reach ClickHouse) before the next phase
                        deadline = time.monotonic() + 600
                        while (
                            not drained(client.get(f"/v1/replays/{replay_id}").json()) and time.monotonic() < deadline
                        ):
                            time.sleep(0.2)  # polling a bench's own stack
        finally:
            finished.close()
    print(
        f"production: {args.rate:g} jobs/s of stats.describe for {args.seconds:g} s per phase; "
        f"history {args.history} jobs"
    )
    print("| extra load | extra jobs/s | production jobs | p50 ms | p99 ms | p99 vs nothing extra |")
    print("|---|---:|---:|---:|---:|---:|")
    base = rows[0][3]["p99_ms"]
    labels = {"none": "nothing extra", "replay": "a replay", "traffic": "the same rate of ordinary submits"}
    for extra, _asked, achieved, pct, n in rows:
        print(
            f"| {labels[extra]} | {achieved:.0f} | {n} | {pct['p50_ms']:.0f} | {pct['p99_ms']:.0f} | "
            f"{pct['p99_ms'] / base:.2f}x |"
        )


if __name__ == "__main__":
    main()
