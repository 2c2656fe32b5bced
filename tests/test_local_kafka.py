"""The self-provisioned broker: starts, keeps its data across restarts, never leaves a JVM behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from streams.kafka_config import KafkaConnection
from streams.local_kafka import LocalKafka, free_port, free_ports, kafka_version, new_cluster_id
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support import ROOT
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in {"Z", "X"}


def test_pinned_version_is_kafka_4():
    assert kafka_version().split(".")[0] == "4"


def test_restart_keeps_topics_and_stop_leaves_no_jvm(tmp_path: Path):
    settings = Settings(topic_prefix="restart.")
    broker = LocalKafka(tmp_path / "kafka").start()
    pid = broker.pid
    try:
        ensure_topics(KafkaConnection.from_settings(settings, broker.bootstrap), settings)
    finally:
        broker.stop()
    assert pid is not None and not alive(pid)

    again = LocalKafka(tmp_path / "kafka", port=broker.port).start()  # same data dir: no re-format
    try:
        topics = AdminClient({"bootstrap.servers": again.bootstrap}).list_topics(timeout=10).topics
        assert {"restart.jobs.requested", "restart.jobs.events"} <= set(topics)
        assert topics["restart.jobs.requested"].partitions.keys() == set(range(settings.requested_partitions))
    finally:
        again.stop()


def test_broker_dies_with_a_killed_parent(tmp_path: Path):
    """kill -9 of the Python process that started the broker must not orphan the JVM."""
    script = textwrap.dedent(f"""
        import sys, time
        from streams.local_kafka import LocalKafka
        broker = LocalKafka({str(tmp_path / "kafka")!r}).start()
        print(broker.pid, flush=True)
        sys.stdin.read()  # block until killed
    """)
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        jvm = int(parent.stdout.readline())
        assert alive(jvm)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not alive(jvm), 30, message="the orphaned JVM to exit")
    finally:
        parent.kill()


def test_cluster_ids_are_kafka_shaped_and_never_look_like_options():
    ids = {new_cluster_id() for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_the_two_listeners_never_get_the_same_port(tmp_path: Path):
    """A broker whose listener and controller share a port does not start (seen in a bench run):
    ports are chosen while the sockets that found them are still bound."""
    assert len(set(free_ports(50))) == 50
    for _ in range(100):
        taken = free_port()  # just released: the kernel may hand it out again at once
        assert free_ports(1, avoid=frozenset({taken})) != [taken]
        broker = LocalKafka(tmp_path / "kafka", port=taken)
        assert broker.port == taken and broker.controller_port != taken
        unset = LocalKafka(tmp_path / "kafka")
        assert unset.port != unset.controller_port
