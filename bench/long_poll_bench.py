"""Long-poll bench: what 1,000 concurrent ``GET /v1/jobs/{id}?wait=`` cost one API process.

    .venv/bin/python -m bench.long_poll_bench [--waits 1000] [--hold-s 10] [--baseline DIR]

One ``jobstream serve --role api --role gateway`` process (no processors: jobs stay queued until
the bench ends them), clients in this process. Phases, each on its own ``--waits`` fresh jobs:

* **idle** — the process with nothing to do: RSS and CPU over ``--hold-s``.
* **wait** — ``--waits`` requests ``?wait=<hold + 30>`` held open: RSS growth per waiting request
  and the process's CPU while they wait; then every job's terminal event is put on ``jobs.events``
  at once: time from that produce to each answer (p50/p99) and the CPU of answering them all.
* **poll** — what the waits replace: ``--waits`` clients polling ``GET /v1/jobs/{id}`` once a
  second (``Retry-After: 1``) for ``--hold-s``: the process's CPU. With ``--baseline DIR`` this phase
  also runs against that checkout's process (a plain status GET must not have got slower), in
  ABBA order on one broker.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
from confluent_kafka import Producer

from bench.common import ROOT, Service, broker, cpu_seconds, free_port, jobstream_service
from streams import topics, wire
from streams.events import EventType, JobEvent
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

TERMINAL_SEQ = 2**31 - 1


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def submit_jobs(client: httpx.AsyncClient, count: int) -> list[str]:
    """``count`` queued jobs, in batches of 1,000 (one request and one Kafka flush each)."""
    ids: list[str] = []
    while len(ids) < count:
        size = min(1000, count - len(ids))
        jobs = [{"kind": "stats.describe", "params": {"values": [1.0, 2.0]}}] * size
        answer = await client.post("/v1/jobs:batch", json={"jobs": jobs})
        answer.raise_for_status()
        ids += [item["job_id"] for item in answer.json()["jobs"]]
    return ids


def finish_all(bootstrap: str, prefix: str, job_ids: list[str]) -> float:
    """Put each job's ``running`` and ``succeeded`` on ``jobs.events``; returns when Kafka acknowledged."""
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix)
    producer = Producer(KafkaConnection.from_settings(settings).producer_config())
    topic = settings.topic(topics.EVENTS)
    for job_id in job_ids:
        for seq, type_, data in ((1, EventType.RUNNING, {"attempt": 1}), (TERMINAL_SEQ, EventType.SUCCEEDED, {})):
            event = JobEvent(job_id=job_id, tenant="default", seq=seq, type=type_, kind="stats.describe", data=data)
            producer.produce(topic, key=job_id.encode(), value=wire.dumps(event))
        producer.poll(0)
    if producer.flush(30) != 0:
        raise RuntimeError("events not acknowledged")
    return time.monotonic()


async def settle(pid: int, quiet_cores: float = 0.05, limit_s: float = 120) -> float:
    """Wait until the process uses less than ``quiet_cores`` over a second (its first reads are done)."""
    started = time.monotonic()
    while time.monotonic() - started < limit_s:
        before = cpu_seconds(pid)
        await asyncio.sleep(1)  # one sampling second, bench only
        if cpu_seconds(pid) - before < quiet_cores:
            break
    return time.monotonic() - started


async def idle(service: Service, hold_s: float) -> dict[str, float]:
    cpu0 = cpu_seconds(service.pid)
    await asyncio.sleep(hold_s)  # measuring a quiet process over a fixed time, bench only
    return {"rss_mib": rss_mib(service.pid), "cpu_cores": (cpu_seconds(service.pid) - cpu0) / hold_s}


async def waits(service: Service, bootstrap: str, prefix: str, count: int, hold_s: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    timeout = httpx.Timeout(hold_s + 120)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=timeout) as client:
        job_ids = await submit_jobs(client, count)
        await asyncio.sleep(2)  # let submitting settle before the baseline sample, bench only
        rss0 = rss_mib(service.pid)
        answered: dict[str, float] = {}
        outcomes: Counter[str] = Counter()

        async def wait_for(job_id: str) -> None:
            answer = await client.get(f"/v1/jobs/{job_id}", params={"wait": str(hold_s + 30)})
            outcomes[f"{answer.status_code} {answer.json().get('status')}"] += 1
            if answer.json()["status"] == "succeeded":
                answered[job_id] = time.monotonic()

        tasks = []
        for start in range(0, count, 50):  # open connections in steps: a burst of 1,000 connects times out here
            tasks += [asyncio.create_task(wait_for(j)) for j in job_ids[start : start + 50]]
            await asyncio.sleep(0.1)  # pacing the ramp, bench only
        settled_s = await settle(service.pid)  # every request read its job once and now only waits
        cpu0 = cpu_seconds(service.pid)
        await asyncio.sleep(hold_s)  # the holding under measure, bench only
        cpu_waiting = (cpu_seconds(service.pid) - cpu0) / hold_s
        rss_waiting = rss_mib(service.pid)
        assert not answered, f"{len(answered)} waits answered before their job finished"
        cpu1 = cpu_seconds(service.pid)
        finished_at = await asyncio.to_thread(finish_all, bootstrap, prefix, job_ids)
        await asyncio.gather(*tasks)
        cpu_answering = cpu_seconds(service.pid) - cpu1
    latencies = np.array([answered[j] - finished_at for j in job_ids if j in answered]) * 1000
    return {
        "waits": count,
        "answered_finished": len(answered),
        "answers": dict(outcomes),
        "rss_mib_before": rss0,
        "rss_mib_waiting": rss_waiting,
        "kib_per_wait": (rss_waiting - rss0) * 1024 / count,
        "s_to_settle": settled_s,
        "cpu_cores_waiting": cpu_waiting,
        "cpu_s_answering_all": cpu_answering,
        "answer_after_produce_p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "answer_after_produce_p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
    }


async def polls(service: Service, count: int, hold_s: float) -> dict[str, float]:
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    async with httpx.AsyncClient(base_url=service.url, limits=limits, timeout=60) as client:
        job_ids = await submit_jobs(client, count)
        done = 0
        stop = time.monotonic() + hold_s + 1

        async def poll(job_id: str) -> None:
            nonlocal done
            while time.monotonic() < stop:
                answer = await client.get(f"/v1/jobs/{job_id}")
                done += 1
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))  # as a polling client does

        tasks = []
        for start in range(0, count, 50):  # open connections in steps, as for the waits
            tasks += [asyncio.create_task(poll(j)) for j in job_ids[start : start + 50]]
            await asyncio.sleep(0.1)  # pacing the ramp, bench only
        await asyncio.sleep(2)  # every poller started, bench only
        cpu0, done0 = cpu_seconds(service.pid), done
        await asyncio.sleep(hold_s)  # the polling under measure, bench only
        cpu = (cpu_seconds(service.pid) - cpu0) / hold_s
        rate = (done - done0) / hold_s
        await asyncio.gather(*tasks)
    per_request = cpu * 1000 / rate if rate else float("nan")
    return {"pollers": count, "cpu_cores": cpu, "requests_per_s": rate, "cpu_ms_per_request": per_request}


def service(bootstrap: str, prefix: str, root: Path = ROOT):  # noqa: ANN201 - a context manager
    env = {"KAFKA_BOOTSTRAP": bootstrap, "JOBSTREAM_TOPIC_PREFIX": prefix, "JOBSTREAM_MAX_WAIT_S": "600"}
    args = ["serve", "--role", "api", "--role", "gateway", "--log-level", "warning"]
    return jobstream_service(args, env, free_port(), root=root)


async def main_async(args: argparse.Namespace, bootstrap: str) -> None:
    prefix = f"lp{uuid.uuid4().hex[:6]}."
    with service(bootstrap, prefix) as after:
        print("idle:", await idle(after, args.hold_s), flush=True)
        print("wait:", await waits(after, bootstrap, prefix, args.waits, args.hold_s), flush=True)
        if args.baseline is None:
            print("poll:", await polls(after, args.waits, args.hold_s), flush=True)
            return
    order = [("before", args.baseline.resolve()), ("after", ROOT), ("after", ROOT), ("before", args.baseline.resolve())]
    for name, root in order:  # ABBA, fresh topics each, on one broker
        with service(bootstrap, f"lp{uuid.uuid4().hex[:6]}.", root) as svc:
            print(f"poll {name}:", await polls(svc, args.waits, args.hold_s), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", type=int, default=1000, help="concurrent waiting requests (and pollers)")
    parser.add_argument("--hold-s", type=float, default=10.0, help="seconds each holding phase is measured")
    parser.add_argument("--baseline", type=Path, help="a checkout to run the poll phase against too (ABBA)")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the service inherits it
    with broker() as bootstrap:
        asyncio.run(main_async(args, bootstrap))


if __name__ == "__main__":
    main()
