"""SSE gateway bench: one gateway process, clients in this (separate) process.

    .venv/bin/python -m bench.sse_bench                      # all phases
    .venv/bin/python -m bench.sse_bench --hold 10000 --fan 1000 --rates 20,50,100

Phases:

* **hold** — open ``--hold`` streams on ``/v1/events`` (heartbeats every ``--heartbeat-s``), report how
  many the gateway holds, its memory per connection (RSS growth / streams), that every stream gets
  heartbeats, the gateway's CPU while idle, and the latency of one event broadcast to all of them.
* **tenant fan-out** — ``--fan`` clients on ``/v1/events``; events produced at each of ``--rates``
  events/s for ``--seconds``: deliveries/s across all clients (= clients × rate when it keeps up),
  completeness, and latency from the event's Kafka timestamp to receipt (p50/p99).
* **per-job** — ``--fan`` clients, each on its own job's stream, events spread over the jobs at
  ``--job-rates`` events/s: the same figures.

``--response sse-starlette`` runs the gateway with sse-starlette's ``EventSourceResponse`` in place of
the lean one (``bench.sse_starlette_gateway``); ``--response lean,sse-starlette`` runs every phase
against each in turn, one fresh gateway per response, on one broker, and prints them side by side.

The gateway is ``jobstream serve --role gateway`` with its own chDB (no sink: its recent window is
the only history, so it is set large enough for the run). Events go straight onto ``jobs.events``
with a confluent producer; each carries its send time, which is also its Kafka timestamp.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
from confluent_kafka import Producer

from bench.common import ROOT, broker, free_port
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics

TICK = os.sysconf("SC_CLK_TCK")


# --- the gateway process -------------------------------------------------------------------------
RESPONSES = {"lean": "jobstream.cli", "sse-starlette": "bench.sse_starlette_gateway"}  # --response → module


class Gateway:
    def __init__(self, bootstrap: str, prefix: str, env: dict[str, str], response: str = "lean") -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="jobstream-sse-bench-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(self.tmp.name) / "gateway.log"
        full_env = {
            **os.environ,
            "KAFKA_BOOTSTRAP": bootstrap,
            "JOBSTREAM_TOPIC_PREFIX": prefix,
            "JOBSTREAM_DATA_DIR": self.tmp.name,
            "CLICKHOUSE_URL": f"chdb://{self.tmp.name}/ch",
            "JOBSTREAM_PORT": str(self.port),
            **env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", RESPONSES[response], "serve", "--role", "gateway", "--log-level", "warning"],
            env=full_env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "wb"),
        )
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(self.log.read_text()[-3000:])
            time.sleep(0.2)  # polling a starting server, bench only

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            print("gateway did not stop in 60 s:", self.log.read_text()[-2000:], file=sys.stderr)
        self.tmp.cleanup()


# --- clients: raw asyncio sockets, chunked SSE, as cheap as possible --------------------------------
@dataclass
class Client:
    path: str
    status: int = 0
    events: int = 0
    heartbeats: int = 0
    latencies: list[float] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    error: str | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False


class SSEProtocol(asyncio.Protocol):
    """A client as a bare protocol: bytes are scanned where they land (data_received), no stream
    reader layers, so the client process adds as little as possible to the latency it measures.
    The server writes whole SSE frames per HTTP chunk, so chunk-size lines never split a frame."""

    def __init__(self, client: Client, measure: bool) -> None:
        self.client = client
        self.measure = measure
        self.buffer = b""
        self.head = True
        self.done = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        now = time.time()
        client = self.client
        data = self.buffer + data
        if self.head:
            if b"\r\n\r\n" not in data:
                self.buffer = data
                return
            head, _, data = data.partition(b"\r\n\r\n")
            self.head = False
            client.status = int(head.split(b" ", 2)[1])
            if client.status != 200:
                client.error = head.decode(errors="replace")[:200]
            client.opened.set()
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self.buffer = data
            return
        self.buffer, data = data[cut + 2 :], data[: cut + 2]
        n = data.count(b"\ndata: ")
        if n:
            client.events += n
            if self.measure:
                start = 0
                while (i := data.find(b'"t0":', start)) >= 0:
                    end = data.find(b"}", i)
                    t0 = float(data[i + 5 : end])
                    client.latencies.append(now - t0)
                    client.sent_at.append(t0)
                    start = end
        client.heartbeats += data.count(b": ping")
        if data.endswith(b"0\r\n\r\n"):  # the server ended the response
            client.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.closed = True
        self.client.opened.set()
        if not self.done.done():
            self.done.set_result(None)


async def run_client(host: str, port: int, client: Client, measure: bool) -> None:
    transport = None
    try:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            lambda: SSEProtocol(client, measure), host, port
        )
        transport.write(b"GET %s HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n" % client.path.encode())
        await protocol.done
    except OSError as exc:
        client.error = f"{type(exc).__name__}: {exc}"
        client.closed = True
        client.opened.set()
    finally:
        if transport is not None:
            transport.close()


async def open_clients(url: str, paths: list[str], measure: bool, wave: int = 500) -> tuple[list[Client], list]:
    host, port = url.removeprefix("http://").split(":")
    clients = [Client(p) for p in paths]
    tasks = []
    for i in range(0, len(clients), wave):
        batch = clients[i : i + wave]
        tasks += [asyncio.create_task(run_client(host, int(port), c, measure)) for c in batch]
        await asyncio.wait_for(asyncio.gather(*(c.opened.wait() for c in batch)), 120)
    return clients, tasks


async def close_clients(tasks: list) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --- the producer -----------------------------------------------------------------------------------
class EventSource:
    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.topic = settings.topic(topics.EVENTS)
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "linger.ms": 1,
                "acks": 1,
                "enable.idempotence": False,
                "compression.type": "lz4",
            }
        )
        self.seq: dict[str, int] = {}

    def send(self, job_id: str, type_: str = "progress") -> None:
        seq = self.seq.get(job_id, -1) + 1
        self.seq[job_id] = seq
        t0 = time.time()
        value = orjson.dumps(
            {
                "schema_version": 1,
                "job_id": job_id,
                "tenant": "default",
                "seq": seq,
                "type": type_,
                "kind": "bench.sse",
                "ts": "2026-01-01T00:00:00Z",
                "data": {"progress": seq / (seq + 1), "t0": t0},
            }
        )  # rising: streams hide the rest
        self.producer.produce(self.topic, key=job_id.encode(), value=value, timestamp=int(t0 * 1000))
        self.producer.poll(0)

    def paced(self, jobs: list[str], rate: float, seconds: float) -> int:
        """Send ``rate`` events/s for ``seconds`` (round-robin over ``jobs``) in 10 ms slices."""
        total = int(rate * seconds)
        start = time.monotonic()
        for i in range(total):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0.002:
                self.producer.flush(0)
                time.sleep(delay)  # pacing a load generator, bench only
            self.send(jobs[i % len(jobs)])
        self.producer.flush(30)
        return total


def p99_ms(values: list[float]) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000, 99)), 1) if values else None


def stats_ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    a = np.asarray(values) * 1000
    return f"p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, max {a.max():.1f} ms"


# --- phases -----------------------------------------------------------------------------------------
async def hold(gw: Gateway, source: EventSource, count: int, heartbeat_s: float) -> dict:
    rss0, cpu0 = gw.rss_mib(), gw.cpu_s()
    t0 = time.monotonic()
    clients, tasks = await open_clients(gw.url, ["/v1/events"] * count, measure=True)
    opened = sum(c.status == 200 for c in clients)
    connect_s = time.monotonic() - t0
    for _ in range(int(heartbeat_s * 10) + 5):  # let every stream pass one heartbeat
        await asyncio.sleep(0.2)
    rss1 = gw.rss_mib()
    beats0 = [c.heartbeats for c in clients]
    cpu_idle0, idle0 = gw.cpu_s(), time.monotonic()
    await asyncio.sleep(heartbeat_s * 2 + 1)
    idle_cpu = (gw.cpu_s() - cpu_idle0) / (time.monotonic() - idle0)
    with_beats = sum(c.heartbeats > b for c, b in zip(clients, beats0, strict=False))
    # broadcast: one event to every stream, five times, a second apart
    for c in clients:
        c.latencies.clear()
        c.events = 0
    for _ in range(5):
        await asyncio.to_thread(source.send, "broadcast")
        await asyncio.to_thread(source.producer.flush, 10)
        await asyncio.sleep(1.0)
    deadline = time.monotonic() + 30
    while sum(c.events for c in clients) < 5 * opened and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    received = sum(c.events for c in clients)
    latencies = [x for c in clients for x in c.latencies]
    alive = sum(not c.closed for c in clients)
    await close_clients(tasks)
    errors = {c.error for c in clients if c.error and "Cancelled" not in c.error}
    return {
        "asked": count,
        "opened": opened,
        "alive_at_end": alive,
        "connect_s": round(connect_s, 1),
        "rss_before_mib": round(rss0, 1),
        "rss_with_streams_mib": round(rss1, 1),
        "kib_per_stream": round((rss1 - rss0) * 1024 / max(opened, 1), 1),
        "streams_with_heartbeats": with_beats,
        "idle_cpu_pct": round(idle_cpu * 100, 1),
        "broadcast_delivered": f"{received}/{5 * opened}",
        "broadcast_latency": stats_ms(latencies),
        "broadcast_p99_ms": p99_ms(latencies),
        "errors": sorted(errors)[:3],
        "connect_cpu_s": round(gw.cpu_s() - cpu0, 1),
    }


async def fan(
    gw: Gateway,
    source: EventSource,
    paths: list[str],
    jobs: list[str],
    rate: float,
    seconds: float,
    profile: str | None = None,
) -> dict:
    clients, tasks = await open_clients(gw.url, paths, measure=True)
    opened = sum(c.status == 200 for c in clients)
    subscribers_per_event = opened / len(jobs) if len(jobs) > 1 else opened
    await asyncio.sleep(0.5)
    for c in clients:
        c.events, c.latencies, c.sent_at = 0, [], []
    cpu0, rusage0 = gw.cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
    spy = None
    if profile:
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(gw.process.pid),
                "--duration",
                str(int(seconds)),
                "--format",
                "raw",
                "--rate",
                "250",
                "-o",
                f"{profile}-{len(paths)}-{rate:g}.txt",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    t0 = time.monotonic()
    sent = await asyncio.to_thread(source.paced, jobs, rate, seconds)
    expected = int(sent * subscribers_per_event)
    deadline = time.monotonic() + 30
    while sum(c.events for c in clients) < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    delivered = sum(c.events for c in clients)
    gw_cpu = (gw.cpu_s() - cpu0) / elapsed
    rusage1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (rusage1.ru_utime + rusage1.ru_stime - rusage0.ru_utime - rusage0.ru_stime) / elapsed
    latencies = [x for c in clients for x in c.latencies]
    first: dict[float, float] = {}  # per event: its first receipt (the pipeline before the fan-out)
    for c in clients:
        for t0, lat in zip(c.sent_at, c.latencies, strict=False):
            first[t0] = min(first.get(t0, lat), lat)
    dropped = sum(c.closed for c in clients)
    await close_clients(tasks)
    if spy is not None:
        spy.wait(60)
    return {
        "clients": opened,
        "events_per_s_in": rate,
        "deliveries_expected": expected,
        "delivered": delivered,
        "deliveries_per_s": round(delivered / seconds),
        "drain_s": round(elapsed - seconds, 2),
        "latency": stats_ms(latencies),
        "p99_ms": p99_ms(latencies),
        "first_receipt_latency": stats_ms(list(first.values())),
        "clients_dropped": dropped,
        "gateway_cpu_pct": round(gw_cpu * 100),
        "client_cpu_pct": round(client_cpu * 100),
    }


async def main_async(args: argparse.Namespace, bootstrap: str) -> None:
    runs = {
        f"{i + 1}. {response}": await run_gateway(args, bootstrap, response) for i, response in enumerate(args.response)
    }
    print(orjson.dumps(runs, option=orjson.OPT_INDENT_2).decode())
    if len(runs) > 1:
        print(side_by_side(runs))


def side_by_side(runs: dict[str, dict]) -> str:
    """The figures the response choice is judged on, one column per run (a markdown table)."""
    first = next(iter(runs.values()))
    rows = [
        ("hold: KiB per idle stream", lambda r: r.get("hold", {}).get("kib_per_stream")),
        ("hold: one event to all, p99 ms", lambda r: r.get("hold", {}).get("broadcast_p99_ms")),
    ]
    for phase in (k for k in first if k != "hold"):
        rows += [
            (f"{phase}: deliveries/s", lambda r, p=phase: r.get(p, {}).get("deliveries_per_s")),
            (f"{phase}: p99 ms", lambda r, p=phase: r.get(p, {}).get("p99_ms")),
        ]
    lines = ["| figure | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    lines += [f"| {name} | " + " | ".join(str(get(r)) for r in runs.values()) + " |" for name, get in rows]
    return "\n".join(lines)


async def run_gateway(args: argparse.Namespace, bootstrap: str, response: str) -> dict[str, object]:
    """Every phase against one fresh gateway serving ``response``, on topics of its own."""
    prefix = f"b{uuid.uuid4().hex[:8]}."
    settings = Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix, events_partitions=6)
    ensure_topics(KafkaConnection.from_settings(settings), settings)
    limit = str(max(args.hold, args.fan) + 100)
    gw = Gateway(
        bootstrap,
        prefix,
        {
            "JOBSTREAM_SSE_MAX_CONNECTIONS": limit,
            "JOBSTREAM_SSE_MAX_CONNECTIONS_PER_TENANT": limit,
            "JOBSTREAM_SSE_HEARTBEAT_S": str(args.heartbeat_s),
            "JOBSTREAM_SSE_RECENT_WINDOW_S": "3600",
            "JOBSTREAM_SSE_RECENT_MAX_EVENTS": "200000",
            "JOBSTREAM_SSE_QUEUE_SIZE": "1000",
        },
        response,
    )
    print(f"--- response: {response}", flush=True)
    source = EventSource(bootstrap, settings)
    results: dict[str, object] = {}
    try:
        if args.hold:
            results["hold"] = await hold(gw, source, args.hold, args.heartbeat_s)
            print("hold:", orjson.dumps(results["hold"]).decode(), flush=True)
        for rate in args.rates:
            key = f"tenant stream, {args.fan} clients, {rate:g} events/s"
            results[key] = await fan(
                gw, source, ["/v1/events"] * args.fan, ["tenant-fan"], rate, args.seconds, args.profile
            )
            print(f"{key}:", orjson.dumps(results[key]).decode(), flush=True)
        for rate in args.job_rates:
            jobs = [f"job-{uuid.uuid4().hex[:12]}" for _ in range(args.fan)]
            for job in jobs:
                source.send(job, "queued")
            source.producer.flush(30)
            key = f"per-job streams, {args.fan} clients on {len(jobs)} jobs, {rate:g} events/s"
            results[key] = await fan(
                gw, source, [f"/v1/jobs/{j}/events" for j in jobs], jobs, rate, args.seconds, args.profile
            )
            print(f"{key}:", orjson.dumps(results[key]).decode(), flush=True)
    finally:
        gw.stop()
    return results


def responses(value: str) -> list[str]:
    names = [x for x in value.split(",") if x]
    if not names or set(names) - set(RESPONSES):
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(RESPONSES)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hold", type=int, default=10_000, help="streams to hold (0: skip)")
    parser.add_argument("--heartbeat-s", type=float, default=5.0)
    parser.add_argument("--fan", type=int, default=1000, help="clients in the fan-out phases")
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[10, 20, 50, 80],
        help="events/s to the tenant stream (each reaches every client)",
    )
    parser.add_argument(
        "--job-rates",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[1000, 5000],
        help="events/s spread over per-job streams",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--response",
        type=responses,
        default=["lean"],
        help="gateway responses to run, in order, comma-separated: lean (the product's), "
        "sse-starlette (needs sse-starlette installed); repeat one to interleave runs",
    )
    parser.add_argument(
        "--profile",
        help="sample the gateway with py-spy during each fan-out phase into this "
        "file prefix (needs py-spy; not a project dependency)",
    )
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the gateway inherits it
    print(f"open files limit {soft} -> {hard}", flush=True)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    with broker() as bootstrap:
        asyncio.run(main_async(args, bootstrap))


if __name__ == "__main__":
    threading.stack_size(512 * 1024)
    main()
