"""Fair scheduling against the real broker: one ``jobstream worker`` process, requests written with the
producers' own partitioner (``streams.partitioning`` through ``wire.records``), events read back.

Small scale: one calculation process, batches of 4, jobs of 50 ms (``test.work`` of tests/calc_plugin.py),
a per-partition read-ahead of 8, so a backlog of a few hundred jobs is seconds of work.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer

from processors.sequence import TERMINAL_SEQ
from streams import topics, wire
from streams.events import JobEvent, new_job_id
from streams.kafka_config import KafkaConnection
from streams.partitioning import RequestPartitioner
from streams.settings import Settings
from streams.topics import JobTopics
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

pytestmark = pytest.mark.kafka

JOB_S = 0.05  # one job's run time: a batch of 4 runs 0.2 s, a backlog of 200 runs 10 s


def scenario(settings: Settings, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "requested_partitions": 4,  # three ordinary partitions and the priority lane
        "priority_partitions": 1,
        "tenant_partitions": 1,
        "calc_processes": 1,
        "batch_max_size": 4,
        "worker_partition_read_ahead": 8,
        "worker_max_pending": 64,
        **overrides,
    }
    return isolated(settings, **values)


def two_tenants(scoped: Settings) -> tuple[str, str]:
    """Two tenant names whose ordinary partitions differ (a shared partition is FIFO: README, "Fair sharing")."""
    partitioner = RequestPartitioner.from_settings(scoped)
    names = [f"tenant-{i}" for i in range(50)]
    first = names[0]
    second = next(n for n in names[1:] if not set(partitioner.tenant_home(n)) & set(partitioner.tenant_home(first)))
    return first, second


class Jobs:
    """Submits requests as the ingest API does and collects every event of the scenario, on a thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        kafka = KafkaConnection.from_settings(settings)
        self.topics = JobTopics.from_settings(settings)
        self.producer = Producer(kafka.producer_config())
        self.events: dict[str, list[JobEvent]] = defaultdict(list)
        self.submitted: dict[str, float] = {}  # job id → its request's timestamp (wall clock)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer(kafka.consumer_config(f"test-{uuid.uuid4().hex}"))
        self._consumer.subscribe([settings.topic(topics.EVENTS)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(500, timeout=0.2):
                if message.error():
                    assert message.error().code() == KafkaError._PARTITION_EOF, message.error()
                    continue
                event = wire.load_event(message.value())
                with self._lock:
                    self.events[event.job_id].append(event)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._consumer.close()

    def submit(self, tenant: str, count: int = 1, priority: int = 0, sleep_s: float = JOB_S) -> list[str]:
        ids = []
        for _ in range(count):
            job = wire.build(new_job_id(), tenant, "test.work", {"sleep_s": sleep_s, "steps": 1}, priority, None)
            for record in wire.records(job, self.topics):
                self.producer.produce(record.topic, key=record.key, value=record.value, partition=record.partition)
            self.submitted[job.job_id] = job.ts.timestamp()
            ids.append(job.job_id)
        assert self.producer.flush(30) == 0
        return ids

    def of(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            return list(self.events.get(job_id, []))

    def started(self, job_id: str) -> float | None:
        """Seconds from submit to the job's first ``running`` event (None: not started)."""
        running = [e.ts.timestamp() for e in self.of(job_id) if e.type.value == "running"]
        return min(running) - self.submitted[job_id] if running else None

    def ended_at(self, job_id: str) -> float | None:
        ends = [e.ts.timestamp() for e in self.of(job_id) if e.terminal]
        return min(ends) if ends else None

    def wait_ended(self, ids: list[str], timeout_s: float, worker: Worker) -> None:
        try:
            wait_until(lambda: all(self.ended_at(j) is not None for j in ids), timeout_s, 0.1, f"{len(ids)} jobs")
        except AssertionError:
            left = sum(self.ended_at(j) is None for j in ids)
            raise AssertionError(f"{left} of {len(ids)} jobs unfinished\n{worker.tail()}") from None


@contextmanager
def running(scoped: Settings, name: str) -> Iterator[tuple[Jobs, Worker]]:
    jobs = Jobs(scoped)
    worker = Worker(scoped, log=Path(scoped.data_dir) / f"{name}.log").start()
    try:
        yield jobs, worker
    finally:
        worker.stop()
        jobs.close()


def warm_up(jobs: Jobs, worker: Worker, tenant: str) -> None:
    """One job through the worker: it has joined the group and started its pool before the timing starts."""
    jobs.wait_ended(jobs.submit(tenant, sleep_s=0.0), 120, worker)


def test_a_flood_from_one_tenant_does_not_delay_another_tenants_job_beyond_the_bound(settings: Settings):
    scoped = scenario(settings)
    a, b = two_tenants(scoped)
    with running(scoped, "flood") as (jobs, worker):
        warm_up(jobs, worker, a)
        flood = jobs.submit(a, 200)  # 10 s of work
        wait_until(lambda: any(jobs.started(j) is not None for j in flood), 60, message="the flood to start")
        [mine] = jobs.submit(b)
        jobs.wait_ended([mine], 30, worker)
        # Bound: its partition is read while A's are paused, and it is the next job of the fair queue:
        # the batch running when it came (0.2 s) plus its own; 2 s leaves room for a loaded machine.
        started = jobs.started(mine)
        assert started is not None and started < 2.0, started
        unfinished = sum(jobs.ended_at(j) is None or jobs.ended_at(j) > jobs.ended_at(mine) for j in flood)  # type: ignore[operator]
        assert unfinished > 100, f"only {unfinished} of A's jobs were left behind B's"
        jobs.wait_ended(flood, 120, worker)


def test_a_high_priority_job_overtakes_a_backlog_it_is_behind_in_kafka(settings: Settings):
    scoped = scenario(settings)
    tenant, _ = two_tenants(scoped)
    with running(scoped, "priority") as (jobs, worker):
        warm_up(jobs, worker, tenant)
        backlog = jobs.submit(tenant, 200)  # far more than the worker holds (read-ahead 8, at most 64)
        wait_until(lambda: any(jobs.started(j) is not None for j in backlog), 60, message="the backlog to start")
        [urgent] = jobs.submit(tenant, priority=9)
        jobs.wait_ended([urgent], 30, worker)
        started = jobs.started(urgent)
        assert started is not None and started < 2.0, started
        behind = sum(jobs.ended_at(j) is None or jobs.ended_at(j) > jobs.ended_at(urgent) for j in backlog)  # type: ignore[operator]
        assert behind > 100, f"only {behind} of the backlog ended after the priority-9 job"
        jobs.wait_ended(backlog, 120, worker)


def test_a_low_priority_job_starts_within_the_ageing_bound_under_a_steady_high_priority_load(settings: Settings):
    ageing_s = 2.0
    # the lane holds more than the load brings in a batch's time: the worker always has a priority-9 job
    scoped = scenario(settings, priority_ageing_s=ageing_s, worker_partition_read_ahead=64, worker_max_pending=256)
    tenant, other = two_tenants(scoped)
    with running(scoped, "ageing") as (jobs, worker):
        warm_up(jobs, worker, tenant)
        stop = threading.Event()
        flood: list[str] = []

        def high_priority_load() -> None:  # 20 jobs/s of priority 9, of 0.1 s each: twice what the worker runs
            while not stop.is_set():
                flood.extend(jobs.submit(other, 4, priority=9, sleep_s=0.1))
                stop.wait(0.2)

        loader = threading.Thread(target=high_priority_load, daemon=True)
        loader.start()
        try:
            wait_until(lambda: len(flood) >= 20, 30, message="the high-priority load to build up")
            [low] = jobs.submit(tenant, priority=0)
            jobs.wait_ended([low], 30, worker)
            # Bound: held for ageing_s, then ahead of every younger job: plus the batch running then.
            started = jobs.started(low)
            assert started is not None and started < ageing_s + 1.5, started  # a batch runs 0.4 s
            assert started >= ageing_s - 0.5, f"started after {started:.2f}s: the load did not keep it waiting"
        finally:
            stop.set()
            loader.join(timeout=10)
        jobs.wait_ended(list(flood), 180, worker)


def test_a_worker_killed_during_a_fair_share_run_loses_nothing(settings: Settings):
    scoped = scenario(settings, calc_processes=2, worker_session_timeout_s=6.0)
    a, b = two_tenants(scoped)
    jobs = Jobs(scoped)
    first = Worker(scoped, index=0, log=Path(scoped.data_dir) / "first.log").start()
    second = Worker(scoped, index=1, log=Path(scoped.data_dir) / "second.log")
    try:
        ids = jobs.submit(a, 120, sleep_s=0.1) + jobs.submit(b, 30, sleep_s=0.1) + jobs.submit(a, 5, priority=9)
        wait_until(lambda: sum(jobs.ended_at(j) is not None for j in ids) >= 20, 120, message="some jobs done")
        first.kill9()
        second.start()
        jobs.wait_ended(ids, 180, second)
        for job_id in ids:
            terminal = [e for e in jobs.of(job_id) if e.terminal]
            assert {e.seq for e in terminal} == {TERMINAL_SEQ}, job_id  # re-run terminals collapse into one
            assert {e.type.value for e in terminal} == {"succeeded"}, (job_id, terminal)
    finally:
        first.stop()
        second.stop()
        jobs.close()
