"""Per-job CPU of per-tenant admission in the API: the check and the hold on submit, and the backlog
tail's handling of the job's queued and running events (no broker: the tail's consumer never polls).

    .venv/bin/python -m bench.admission_micro
"""

from __future__ import annotations

import time

from ingest_api.admission import Admission, AdmissionConfig
from streams.backlog import TenantBacklog
from streams.events import EventType, utcnow
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import build, encode_event

settings = Settings(kafka_bootstrap="127.0.0.1:1", tenant_max_queued_jobs=10**9)
backlog = TenantBacklog(KafkaConnection.from_settings(settings), "events", 3600)
admission = Admission(AdmissionConfig.from_settings(settings), backlog)


class Record:
    """What the tail reads of a Kafka message: its value and timestamp."""

    __slots__ = ("raw", "job_id")

    def __init__(self, raw: bytes, job_id: str) -> None:
        self.raw, self.job_id = raw, job_id

    def key(self) -> bytes:
        return self.job_id.encode()

    def value(self) -> bytes:
        return self.raw

    def timestamp(self) -> tuple[int, int]:
        return (1, int(time.time() * 1000))


N = 100_000
jobs = [build(f"{i:032x}", "acme", "stats.describe", {"values": [1.0, 2.0]}, 0, None) for i in range(N)]
queued = [Record(j.queued_value, j.job_id) for j in jobs]
running = [
    Record(
        encode_event(
            j.job_id, "acme", 1, EventType.RUNNING, j.kind, {"attempt": 1, "batch_size": 1, "worker": "w:1"}, utcnow()
        ),
        j.job_id,
    )
    for j in jobs
]


def submits() -> None:
    for j in jobs:
        admission.check("acme")
        backlog.hold("acme", [j.job_id])


def tail(records: list[Record]) -> None:
    for i in range(0, N, 2000):
        backlog.handle(records[i : i + 2000])  # type: ignore[arg-type]  # the fields the tail reads


for label, run in [
    ("check + hold (per submit)", submits),
    ("tail: queued events (already held)", lambda: tail(queued)),
    ("tail: running events (removal)", lambda: tail(running)),
]:
    t = time.process_time()
    run()
    d = time.process_time() - t
    print(f"{label:<40} {d / N * 1e6:6.2f} us/job")
backlog.stop()
