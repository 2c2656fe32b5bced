"""Sink throughput into ClickHouse (chDB) and the lag from Kafka append to queryable row.

    .venv/bin/python -m bench.sink_bench [--events 400000] [--rate 10000] [--seconds 30] [--batch-size 5000]

In one run, against one real broker (KAFKA_BOOTSTRAP, else a local one) and a fresh chDB dir:

1. **throughput** (run second) — ``--events`` events (jobs of four: queued, running, progress,
   succeeded) are put on ``jobs.events`` first; then the sink starts and drains
   them. events/s = events written after the first batch / time from the first
   batch to the last (joining the group is start-up, not throughput). That is
   the whole path: consume, decode, outcome timing, the insert with its seven
   materialized views, intent and offset commits.
2. **lag at ``--rate`` events/s** (run first, on empty tables) — a producer process paces events for
   ``--seconds`` while the sink runs. An event's append time is its Kafka
   acknowledgement; a prober (its own read-only ClickHouse session) asks every
   20 ms for the highest offset per partition that a query can see. Lag = first
   probe that sees the event − its acknowledgement.

The sink runs in this process with the shipped code and settings (batch size from
``--batch-size``, wait ``JOBSTREAM_SINK_BATCH_MAX_WAIT_MS`` default 200 ms).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka import Producer

from bench.common import broker
from bench.histories import job_history
from sink.group import group_lag
from sink.sink import Sink, SinkConfig
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import dumps

PLACEHOLDER = b"J" * 32


def fill(bootstrap: str, settings: Settings, count: int) -> None:
    """Put ``count`` events (whole job histories, distinct job ids) on jobs.events, fast."""
    producer = Producer(KafkaConnection.from_settings(settings).producer_config(**{"linger.ms": 20}))
    topic = settings.topic(topics.EVENTS)
    history = job_history("throughput", batch_size=64)
    template = [dumps(e).replace(e.job_id.encode(), PLACEHOLDER) for e in history]
    for _ in range(count // len(template)):
        key = uuid.uuid4().hex.encode()
        for value in template:
            while True:
                try:
                    producer.produce(topic, key=key, value=value.replace(PLACEHOLDER, key))
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.poll(0)
    producer.flush(120)


def paced(bootstrap: str, settings: Settings, rate: int, seconds: float, out: multiprocessing.Queue) -> None:
    """Produce ``rate`` events/s; send back (partition, offset, ack time) of every event."""
    acks: list[tuple[int, int, float]] = []
    producer = Producer(KafkaConnection.from_settings(settings).producer_config(**{"linger.ms": 1}))
    topic = settings.topic(topics.EVENTS)

    def acked(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is None:
            acks.append((msg.partition(), msg.offset(), time.time()))

    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = int((time.monotonic() - started) * rate) - sent
        for _ in range(due // 4):
            for event in job_history("lag", batch_size=64):
                producer.produce(topic, key=event.job_id.encode(), value=dumps(event), on_delivery=acked)
            sent += 4
        producer.poll(0.002)
    producer.flush(60)
    out.put(acks)


def throughput(bootstrap: str, settings: Settings, store: ClickHouseStore, events: int) -> dict[str, float]:
    t0 = time.monotonic()
    fill(bootstrap, settings, events)
    fill_s = time.monotonic() - t0
    sink = Sink(KafkaConnection.from_settings(settings), store, SinkConfig.from_settings(settings)).start()
    while not sink.stats.batches_written:  # joining the group and the first batch: start-up, not throughput
        time.sleep(0.005)
    started, first = time.monotonic(), sink.stats.events_written
    while sink.stats.events_written < events:
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    stats = sink.stats
    sink.stop()
    events -= first
    rows = store.query("SELECT count() FROM job_events WHERE tenant = 'throughput'")[0][0]
    if rows != events + first:
        raise RuntimeError(f"expected {events + first} rows, found {rows}")
    return {
        "events": events,
        "seconds": elapsed,
        "events_per_s": events / elapsed,
        "fill_s": fill_s,
        "batches": stats.batches_written - 1,
        "avg_batch": events / max(stats.batches_written - 1, 1),
    }


def lag(bootstrap: str, settings: Settings, store: ClickHouseStore, rate: int, seconds: float) -> dict[str, float]:
    sink = Sink(KafkaConnection.from_settings(settings), store, SinkConfig.from_settings(settings)).start()
    while (
        group_lag(KafkaConnection.from_settings(settings), settings) > 0
    ):  # the sink is assigned and caught up before we measure
        time.sleep(0.05)
    spawn = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue = spawn.Queue()
    producer = spawn.Process(target=paced, args=(bootstrap, settings, rate, seconds, out))
    probes: list[tuple[float, dict[int, int]]] = []
    producer.start()
    probe = "SELECT kafka_partition, max(kafka_offset) FROM job_events WHERE tenant = 'lag' GROUP BY kafka_partition"
    acks = None
    while acks is None or len(probes) < 2 or (acks and not _all_seen(acks, probes[-1][1])):
        seen = dict(store.readonly_query(probe).rows)
        probes.append((time.time(), seen))
        if acks is None and not out.empty():
            acks = out.get()
        time.sleep(0.02)
    producer.join()
    sink.stop()
    lags = []
    times = np.array([t for t, _ in probes])
    for partition in {p for p, _, _ in acks or []}:
        visible = np.array([seen.get(partition, -1) for _, seen in probes])  # never decreases
        mine = [(o, a) for p, o, a in acks or [] if p == partition]
        first = np.searchsorted(visible, np.array([o for o, _ in mine]), side="left")
        lags += [max(0.0, times[i] - a) for i, (_, a) in zip(first, mine, strict=False)]
    values = np.asarray(lags) * 1000
    return {
        "events": len(lags),
        "rate": len(lags) / seconds,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "max_ms": float(values.max()),
    }


def _all_seen(acks: list[tuple[int, int, float]], seen: dict[int, int]) -> bool:
    last: dict[int, int] = {}
    for partition, offset, _ in acks:
        last[partition] = max(last.get(partition, -1), offset)
    return all(seen.get(p, -1) >= o for p, o in last.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rate", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--batch-size", type=int, default=Settings().sink_batch_max_size)
    args = parser.parse_args()
    with broker() as bootstrap, tempfile.TemporaryDirectory(prefix="jobstream-bench-") as tmp:
        store = ClickHouseStore(f"chdb://{Path(tmp) / 'clickhouse'}")
        base = Settings(kafka_bootstrap=bootstrap, sink_batch_max_size=args.batch_size)
        first = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
        second = base.model_copy(update={"topic_prefix": f"bench{uuid.uuid4().hex[:6]}."})
        ensure_topics(KafkaConnection.from_settings(first), first)
        ensure_topics(KafkaConnection.from_settings(second), second)
        latency = lag(bootstrap, second, store, args.rate, args.seconds)  # first: no merge backlog from phase 1
        result = throughput(bootstrap, first, store, args.events)
        store.close()
    print(
        f"sink batch max size {args.batch_size}, max wait {base.sink_batch_max_wait_ms} ms, "
        f"{base.events_partitions} partitions, chDB"
    )
    print(
        f"throughput: {result['events']:,} events in {result['seconds']:.1f} s = {result['events_per_s']:,.0f} "
        f"events/s ({result['batches']} batches, {result['avg_batch']:,.0f} events each)"
    )
    print(
        f"lag at {latency['rate']:,.0f} events/s for {args.seconds:.0f} s ({latency['events']:,} events): "
        f"p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms, max {latency['max_ms']:.0f} ms"
    )


if __name__ == "__main__":
    main()
