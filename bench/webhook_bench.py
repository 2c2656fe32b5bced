"""Webhook deliveries: how many per second one notifier posts, and the lag from event to delivery.

    .venv/bin/python -m bench.webhook_bench [--jobs 20000] [--rate 200] [--seconds 15] [--concurrency 64]

Against one real broker (KAFKA_BOOTSTRAP, else a local one), with the notifier as its own
process (``jobstream serve --role notifier``, as in docker-compose) and a receiver in another
(uvicorn, answers 200, notes when each delivery arrived and its event's ``ts``):

1. **lag at ``--rate`` jobs/s** (first) — a job's ``queued`` (with the webhook) and ``succeeded``
   events are put on ``jobs.events`` at that pace for ``--seconds``; lag = arrival at the receiver
   − the succeeded event's ``ts`` (set just before it is produced): Kafka, the notifier's consumer,
   signing, the POST.
2. **throughput** — ``--jobs`` more jobs' events put on the topic at once; deliveries/s = deliveries
   after the first / time from the first arrival to the last. Also the notifier's CPU per delivery.

Every delivery is signed (Standard Webhooks, HMAC-SHA256) and goes to one endpoint, so
``--concurrency`` (JOBSTREAM_WEBHOOK_CONCURRENCY_PER_ENDPOINT) bounds the requests in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
from confluent_kafka import Producer

from bench.common import broker, cpu_seconds, free_port, jobstream_service
from streams import topics
from streams.events import EventType
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import encode_event


# --- the receiver (its own process) -------------------------------------------------------------
def receiver_app(out: Path):  # type: ignore[no-untyped-def]
    """An ASGI app that answers 200 and writes (event ts, arrival) pairs to ``out`` at shutdown."""
    seen: list[tuple[str, float, float]] = []  # path, event ts, arrival

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    out.write_bytes(orjson.dumps(seen))
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        arrived = time.time()
        if scope["method"] == "GET":  # the bench asks how many arrived per path
            counts: dict[str, int] = {}
            for where, _, _ in seen:
                counts[where] = counts.get(where, 0) + 1
            count = orjson.dumps(counts)
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(count)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": count})
            return
        if scope["path"] != "/ready":
            event = orjson.loads(body)
            seen.append((scope["path"], datetime.fromisoformat(event["ts"]).timestamp(), arrived))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _run_receiver(port: int, out: str) -> None:
    import uvicorn

    uvicorn.run(receiver_app(Path(out)), host="127.0.0.1", port=port, log_level="warning", lifespan="on")


# --- the bench ----------------------------------------------------------------------------------
def _pairs(tenant: str, url: str, count: int) -> list[tuple[bytes, bytes, bytes]]:
    hook = {"webhook": url, "webhook_events": ["succeeded"]}
    rows = []
    for _ in range(count):
        job = uuid.uuid4().hex
        now = datetime.now(UTC)
        rows.append((job.encode(), encode_event(job, tenant, 0, EventType.QUEUED, "stats.describe", hook, now), b""))
    return rows


def _succeeded(job: bytes, tenant: str) -> bytes:
    data = {"result": {"count": 3, "mean": 2.0}, "calc_version": "1"}
    return encode_event(job.decode(), tenant, 2**31 - 1, EventType.SUCCEEDED, "stats.describe", data, datetime.now(UTC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="jobstream-webhook-bench-") as tmp:
        prefix = f"whb{uuid.uuid4().hex[:6]}."
        settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, events_partitions=6)
        kafka = KafkaConnection.from_settings(settings)
        ensure_topics(kafka, settings)
        rport, out = free_port(), Path(tmp) / "arrivals.json"
        receiver = subprocess.Popen(
            [
                sys.executable,
                "-c",
                f"from bench.webhook_bench import _run_receiver; _run_receiver({rport}, {str(out)!r})",
            ],
            cwd=Path(__file__).resolve().parent.parent,
        )
        url = f"http://127.0.0.1:{rport}"
        env = {
            "KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_EVENTS_PARTITIONS": "6",
            "JOBSTREAM_WEBHOOK_ALLOW_PRIVATE": "true",
            "JOBSTREAM_WEBHOOK_CONCURRENCY_PER_ENDPOINT": str(args.concurrency),
            "JOBSTREAM_WEBHOOK_ENDPOINT_QUEUE": "1000000",
            "JOBSTREAM_WEBHOOK_MAX_IN_FLIGHT": "1000000",
            "JOBSTREAM_WEBHOOK_SECRET_KEY": uuid.uuid4().hex,
        }
        producer = Producer(kafka.producer_config(**{"linger.ms": 5}))
        topic = settings.topic(topics.EVENTS)
        try:
            with jobstream_service(["serve", "--role", "notifier", "--log-level", "warning"], env, free_port()) as svc:
                _wait_receiver(rport)
                # the notifier has joined its group and reads: one job delivered end to end
                for job, value, _ in _pairs("acme", f"{url}/warm", 1):
                    producer.produce(topic, key=job, value=value)
                    producer.produce(topic, key=job, value=_succeeded(job, "acme"))
                producer.flush(30)
                _wait_for(rport, "/warm", 1)
                # 1. lag at a steady rate
                count = int(args.rate * args.seconds)
                queued = _pairs("acme", f"{url}/lag", count)
                started = time.monotonic()
                for i, (job, value, _) in enumerate(queued):
                    producer.produce(topic, key=job, value=value)
                    producer.produce(topic, key=job, value=_succeeded(job, "acme"))
                    producer.poll(0)
                    pause = started + (i + 1) / args.rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)  # pacing the producer
                producer.flush(30)
                _wait_for(rport, "/lag", count)
                # 2. throughput: everything at once
                burst = _pairs("acme", f"{url}/burst", args.jobs)
                cpu_before = cpu_seconds(svc.pid)
                for job, value, _ in burst:
                    producer.produce(topic, key=job, value=value)
                    producer.produce(topic, key=job, value=_succeeded(job, "acme"))
                    producer.poll(0)
                producer.flush(60)
                _wait_for(rport, "/burst", args.jobs)
                cpu = cpu_seconds(svc.pid) - cpu_before
        finally:
            receiver.send_signal(signal.SIGINT)
            receiver.wait(timeout=60)
        arrivals = orjson.loads(out.read_bytes())
        outcomes = _outcomes(kafka, settings.topic(topics.WEBHOOK_ATTEMPTS))
        lag = np.array([a - ts for where, ts, a in arrivals if where == "/lag"]) * 1000
        burst_arrivals = sorted(a for where, _, a in arrivals if where == "/burst")
        span = burst_arrivals[-1] - burst_arrivals[0]
        result = {
            "delivered": len(arrivals),
            "expected": 1 + count + args.jobs,
            "lag_rate_jobs_per_s": args.rate,
            "lag_p50_ms": round(float(np.percentile(lag, 50)), 1),
            "lag_p99_ms": round(float(np.percentile(lag, 99)), 1),
            "lag_max_ms": round(float(lag.max()), 1),
            "burst_jobs": args.jobs,
            "deliveries_per_s": round((len(burst_arrivals) - 1) / span, 1),
            "notifier_cpu_ms_per_delivery": round(cpu * 1000 / max(1, len(burst_arrivals)), 3),
            "attempts_by_outcome": outcomes,
            "concurrency_per_endpoint": args.concurrency,
            "cores": os.cpu_count(),
        }
        print(json.dumps(result, indent=2))


def _outcomes(kafka: KafkaConnection, topic: str) -> dict[str, int]:
    """Every recorded attempt, by outcome and error (anything but "delivered" means the receiver was not the limit)."""
    from confluent_kafka import Consumer

    consumer = Consumer(kafka.consumer_config(f"bench-{uuid.uuid4().hex}", **{"enable.partition.eof": True}))
    consumer.subscribe([topic])
    counts: dict[str, int] = {}
    idle = 0
    while idle < 10:
        messages = consumer.consume(1000, timeout=0.5)
        idle = idle + 1 if not messages else 0
        for m in messages:
            if m.error() is None:
                row = orjson.loads(m.value())
                name = row["outcome"] + (f" ({row['error']})" if row["error"] else "")
                counts[name] = counts.get(name, 0) + 1
    consumer.close()
    return counts


def _wait_receiver(port: int) -> None:
    import httpx

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/ready", content=b"{}")
            return
        except httpx.TransportError:
            time.sleep(0.1)  # polling a starting server, bench only
    raise RuntimeError("the receiver did not start")


def _wait_for(port: int, where: str, count: int, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while orjson.loads(httpx.get(f"http://127.0.0.1:{port}/count").content).get(where, 0) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{where}: fewer than {count} deliveries in {timeout_s}s")
        time.sleep(0.2)  # polling the receiver, bench only


if __name__ == "__main__":
    main()
