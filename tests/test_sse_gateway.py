"""The SSE gateway against the real broker and ClickHouse: the history/live seam, resume, restarts,
slow clients and filters.

Events are produced straight onto ``jobs.events`` (as processors would), so each test controls
exactly which seqs exist — including non-contiguous ones and the fixed terminal seq — and where
they are (only in ClickHouse, only in the gateway's recent window, or still to come).
"""

from __future__ import annotations

import socket
import threading
import uuid
from typing import Any

import httpx
import orjson
import pytest

from store.clickhouse import ClickHouseStore
from streams import topics
from streams.events import JobEvent
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.wire import dumps
from tests.support.kafka import EventProducer
from tests.support.sse import TERMINAL_SEQ, Reader, app_state, bearer, event, gateway, keys, new_job, stored_seqs
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def events_out(settings: Settings) -> EventProducer:
    return EventProducer(settings)


# --- per-job stream ---------------------------------------------------------------------------
def test_late_join_gets_history_then_live_without_gap_or_duplicate(
    stack: str, settings: Settings, store: ClickHouseStore, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 1, "running"), event(job, 5), event(job, 6))
    wait_until(lambda: stored_seqs(store, job) == [0, 1, 5, 6], 60, message="history in ClickHouse")
    events_out.send(event(job, 100))  # maybe only in the gateway's window yet: the seam must not care

    reader = Reader(stack, f"/v1/jobs/{job}/events").start()
    assert reader.status == 200
    assert reader.response_headers["content-type"].startswith("text/event-stream")
    assert reader.response_headers["cache-control"] == "no-cache"
    assert reader.response_headers["x-accel-buffering"] == "no"
    reader.wait_for(5)
    assert reader.seqs() == [0, 1, 5, 6, 100]
    assert reader.types() == ["queued", "running", "progress", "progress", "progress"]

    # live, including a redelivered duplicate (seq 6 again) and the fixed terminal seq
    events_out.send(
        event(job, 1000), event(job, 6), event(job, 1001), event(job, TERMINAL_SEQ, "succeeded", result={"ok": True})
    )
    reader.wait_done()
    assert reader.error is None
    assert reader.seqs() == [0, 1, 5, 6, 100, 1000, 1001, TERMINAL_SEQ]
    assert reader.data()[-1]["data"] == {"result": {"ok": True}}
    assert reader.data()[2] == orjson.loads(dumps(event(job, 5))) | {"ts": reader.data()[2]["ts"]}


def test_clients_joining_while_events_flow_see_every_event_once_in_order(
    stack: str, settings: Settings, events_out: EventProducer
):
    job = new_job()
    seqs = [0] + [10 * i + 1 for i in range(1, 200)]
    sent: list[int] = []
    events_out.send(event(job, 0, "queued"))
    sent.append(0)

    def produce() -> None:
        producer = EventProducer(settings)
        for i in range(1, len(seqs), 5):
            batch = seqs[i : i + 5]
            producer.send(*(event(job, s) for s in batch))
            sent.extend(batch)
        producer.send(event(job, TERMINAL_SEQ, "succeeded"))
        sent.append(TERMINAL_SEQ)

    thread = threading.Thread(target=produce, daemon=True)
    readers = [Reader(stack, f"/v1/jobs/{job}/events").start()]
    thread.start()
    for joined_after in (30, 80, 150):  # join at different points of the flow
        wait_until(lambda: len(sent) >= joined_after, 60, message=f"{joined_after} events sent")
        readers.append(Reader(stack, f"/v1/jobs/{job}/events").start())
    thread.join(120)
    for reader in readers:
        reader.wait_done(120)
        assert reader.error is None
        assert reader.seqs() == seqs + [TERMINAL_SEQ]


def test_resume_after_reconnect_by_header_or_query_and_204_after_the_end(stack: str, events_out: EventProducer):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 3, "running"), event(job, 7), event(job, 9))
    first = Reader(stack, f"/v1/jobs/{job}/events").start()
    first.wait_for(3)
    first.close()  # the client goes away after seq 7
    last = first.events[2].id
    assert last == "7"
    events_out.send(event(job, 12), event(job, TERMINAL_SEQ, "failed", error={"type": "X", "message": "m"}))

    by_header = Reader(stack, f"/v1/jobs/{job}/events", headers={"Last-Event-ID": last}).start()
    by_query = Reader(stack, f"/v1/jobs/{job}/events", params={"last_event_id": last}).start()
    for reader in (by_header, by_query):
        reader.wait_done()
        assert reader.seqs() == [9, 12, TERMINAL_SEQ]
    after_end = httpx.get(f"{stack}/v1/jobs/{job}/events", headers={"Last-Event-ID": str(TERMINAL_SEQ)})
    assert after_end.status_code == 204  # EventSource stops reconnecting on 204
    bad = httpx.get(f"{stack}/v1/jobs/{job}/events", headers={"Last-Event-ID": "0:1,1:2"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"


def test_resume_after_gateway_restart_per_job(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 2, "running"), event(job, 4))
    with gateway(settings, store) as first:
        reader = Reader(first.url, f"/v1/jobs/{job}/events").start()
        reader.wait_for(3)
        events_out.send(event(job, 8))
        reader.wait_for(4)
        last = reader.events[-1].id
    reader.wait_done(30)  # the gateway went away: the stream ended without a terminal event
    assert reader.seqs() == [0, 2, 4, 8] and reader.disconnects == [{"reason": "shutdown", "resume": True}]
    events_out.send(event(job, 16), event(job, 32))  # while no gateway runs
    # a gateway without a recent window reads everything before its start from ClickHouse;
    # one with the default window gets the newest from memory: both must fit the seam exactly
    later: list[int] = []
    for window_s in (0.0, 10.0):
        with gateway(settings, store, sse_recent_window_s=window_s) as second:
            resumed = Reader(second.url, f"/v1/jobs/{job}/events", headers={"Last-Event-ID": last}).start()
            resumed.wait_for(2 + len(later))
            assert resumed.seqs() == [16, 32] + later
            later.append(64 + int(window_s))
            events_out.send(event(job, later[-1]))
            resumed.wait_for(2 + len(later))
            assert resumed.seqs() == [16, 32] + later
            resumed.close()
    events_out.send(event(job, TERMINAL_SEQ, "succeeded"))
    with gateway(settings, store) as third:
        tail = Reader(third.url, f"/v1/jobs/{job}/events", headers={"Last-Event-ID": "16"}).start()
        tail.wait_done()
        assert tail.seqs() == [32, 64, 74, TERMINAL_SEQ]


def test_stream_of_a_job_whose_start_is_gone_says_reset_then_goes_on(stack: str, events_out: EventProducer):
    job = new_job()  # as if retention removed queued and the first events: seq 40 is the oldest left
    events_out.send(event(job, 40, "running"), event(job, 41))
    reader = Reader(stack, f"/v1/jobs/{job}/events").start()
    reader.wait_for(1)
    assert reader.types() == ["reset"]
    reset = reader.data()[0]
    assert reset["reason"] == "history_unavailable" and f"/v1/jobs/{job}" in reset["action"]
    events_out.send(event(job, 42), event(job, TERMINAL_SEQ, "succeeded"))
    reader.wait_done()
    assert reader.types() == ["reset", "progress", "succeeded"] and reader.seqs() == [42, TERMINAL_SEQ]
    # resuming from an id that history still holds is fine
    resumed = Reader(stack, f"/v1/jobs/{job}/events", headers={"Last-Event-ID": "40"}).start()
    resumed.wait_done()
    assert resumed.seqs() == [41, 42, TERMINAL_SEQ]


def test_stream_of_a_finished_job_whose_start_is_gone_says_reset_then_ends_with_the_outcome(
    stack: str, events_out: EventProducer
):
    job = new_job()  # no queued event (retention, or a sink still behind), but the job is over
    events_out.send(event(job, 40, "running"), event(job, TERMINAL_SEQ, "succeeded"))
    reader = Reader(stack, f"/v1/jobs/{job}/events").start()
    reader.wait_done(30)  # it used to stay open forever on heartbeats: nothing after the terminal seq
    assert reader.types() == ["reset", "succeeded"] and reader.seqs() == [TERMINAL_SEQ]


# --- slow clients -------------------------------------------------------------------------------
def _raw_stream(url: str, path: str) -> socket.socket:
    """A client that asks for a stream and then does not read: a tiny receive buffer, no reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket, until: bytes, timeout_s: float = 60) -> bytes:
    sock.settimeout(timeout_s)
    data = bytearray()
    while until not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_slow_client_is_disconnected_with_a_reason_and_others_get_everything(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"))
    pad = "x" * 4000  # big events fill the slow client's socket buffers quickly
    with gateway(settings, store, sse_queue_size=50, sse_send_timeout_s=120) as gw:
        state = app_state(gw)
        fast = Reader(gw.url, f"/v1/jobs/{job}/events").start()
        fast.wait_for(1)
        slow = _raw_stream(gw.url, f"/v1/jobs/{job}/events")
        wait_until(lambda: state.fanout.subscribers == 2, 30, message="both clients subscribed")
        seq = 0
        for _ in range(200):  # paced by the fast client: it never has more than 40 events outstanding
            batch = [event(job, seq + i + 1, pad=pad) for i in range(40)]
            events_out.send(*batch)
            seq += 40
            fast.wait_for(seq + 1)
            if state.fanout.overflows:
                break
        assert state.fanout.overflows == 1, "the slow client was never dropped"
        wait_until(lambda: state.fanout.subscribers == 1, 30, message="the slow client's subscription freed")
        events_out.send(event(job, TERMINAL_SEQ, "succeeded"))
        fast.wait_done()
        assert fast.error is None
        assert fast.seqs() == list(range(seq + 1)) + [TERMINAL_SEQ]  # everything, nothing twice

        body = _read_all(slow, until=b"0\r\n\r\n")  # now it reads: its old events, then the reason
        slow.close()
        assert b"event: disconnect" in body and b'"reason":"slow_client"' in body
        assert body.count(b"event: progress") < seq
        wait_until(lambda: state.sse_limits.total == 0, 30, message="connection slots released")


# --- gateway restart and filters on the multi-job stream --------------------------------------------
def test_multi_job_stream_resumes_across_a_gateway_restart(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("acme")
    tenant, auth = t["acme"], bearer(t["acme:key"])
    jobs = [new_job() for _ in range(6)]
    with gateway(settings, store, api_keys=api_keys) as first:
        reader = Reader(first.url, "/v1/events", headers=auth).start()
        wait_until(lambda: reader.ids, 30, message="the opening position")
        events_out.send(*(event(j, 0, "queued", tenant=tenant) for j in jobs))
        reader.wait_for(6)
        events_out.send(*(event(j, 5, "running", tenant=tenant) for j in jobs[:3]))
        reader.wait_for(9)
        before = [(d["job_id"], d["seq"]) for d in reader.data()]
        last = reader.ids[-1]
    reader.wait_done(30)
    events_out.send(*(event(j, 5, "running", tenant=tenant) for j in jobs[3:]))
    events_out.send(*(event(j, TERMINAL_SEQ, "succeeded", tenant=tenant) for j in jobs))
    expected_after = [(j, 5) for j in jobs[3:]] + [(j, TERMINAL_SEQ) for j in jobs]
    for window_s in (0.0, 10.0):  # replayed from ClickHouse, or from the new gateway's window
        with gateway(settings, store, api_keys=api_keys, sse_recent_window_s=window_s) as second:
            resumed = Reader(second.url, "/v1/events", headers=auth | {"Last-Event-ID": last}).start()
            resumed.wait_for(len(expected_after))
            marker = event(new_job(), 0, "queued", tenant=tenant)  # then nothing more may come
            events_out.send(marker)
            expected_after.append((marker.job_id, marker.seq))
            resumed.wait_for(len(expected_after))
            after = [(d["job_id"], d["seq"]) for d in resumed.data()]
            assert after[-1] == (marker.job_id, marker.seq) and len(after) == len(expected_after)
            assert sorted(after) == sorted(expected_after), after
            assert not set(after) & set(before)
            for j in jobs:  # each job's events in seq order
                mine = [s for job_id, s in after if job_id == j]
                assert mine == sorted(mine)
            resumed.close()


def test_multi_job_stream_filters_by_kind_status_and_job(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("acme")
    tenant, auth = t["acme"], bearer(t["acme:key"])
    a, b, c = new_job(), new_job(), new_job()
    with gateway(settings, store, api_keys=api_keys) as gw:
        everything = Reader(gw.url, "/v1/events", headers=auth).start()
        by_kind = Reader(gw.url, "/v1/events", headers=auth, params={"kind": "k.two"}).start()
        by_status = Reader(gw.url, "/v1/events", headers=auth, params={"status": "running,succeeded"}).start()
        by_job = Reader(gw.url, "/v1/events", headers=auth, params={"job_id": [a, c]}).start()
        readers = (everything, by_kind, by_status, by_job)
        wait_until(lambda: all(r.ids for r in readers), 30, message="streams open")
        events_out.send(
            event(a, 0, "queued", tenant, "k.one"),
            event(b, 0, "queued", tenant, "k.two"),
            event(c, 0, "queued", tenant, "k.two"),
        )
        events_out.send(
            event(a, 1, "running", tenant, "k.one"),
            event(b, 1, "running", tenant, "k.two"),
            event(b, 2, "progress", tenant, "k.two"),
            event(c, 1, "retrying", tenant, "k.two"),
            event(a, TERMINAL_SEQ, "succeeded", tenant, "k.one"),
            event(c, TERMINAL_SEQ, "failed", tenant, "k.two"),
        )
        everything.wait_for(9)

        def seen(reader: Reader) -> set[tuple[str, int]]:
            return {(d["job_id"], d["seq"]) for d in reader.data()}

        wait_until(
            lambda: len(by_kind.events) >= 6 and len(by_status.events) >= 5 and len(by_job.events) >= 6,
            30,
            message="filtered events",
        )
        assert seen(by_kind) == {(b, 0), (c, 0), (b, 1), (b, 2), (c, 1), (c, TERMINAL_SEQ)}
        assert seen(by_status) == {(a, 1), (b, 1), (b, 2), (c, 1), (a, TERMINAL_SEQ)}
        assert seen(by_job) == {(a, 0), (c, 0), (a, 1), (c, 1), (a, TERMINAL_SEQ), (c, TERMINAL_SEQ)}
        assert len(everything.events) == 9 and {d["tenant"] for d in everything.data()} == {tenant}
        # a filtered stream resumes with its filter: nothing of the other kinds, nothing twice
        resumed = Reader(
            gw.url, "/v1/events", headers=auth | {"Last-Event-ID": by_kind.events[2].id}, params={"kind": "k.two"}
        ).start()
        resumed.wait_for(3)
        # b's seq 2 again (a processor re-ran it), then a marker: after it, nothing more may come
        events_out.send(event(b, 2, "progress", tenant, "k.two"), event(b, 3, "progress", tenant, "k.two"))
        resumed.wait_for(4)
        everything.wait_for(10)
        assert [(d["job_id"], d["seq"]) for d in everything.data()].count((b, 2)) == 1
        assert everything.data()[-1]["seq"] == 3 and len(everything.events) == 10
        already = {(d["job_id"], d["seq"]) for d in by_kind.data()[:3]}
        assert seen(resumed) == seen(by_kind) - already | {(b, 3)} and len(resumed.events) == 4
        assert [d["seq"] for d in resumed.data() if d["job_id"] == c] == sorted(
            d["seq"] for d in resumed.data() if d["job_id"] == c
        )
        for reader in (*readers, resumed):
            reader.close()
        bad = httpx.get(f"{gw.url}/v1/events", headers=auth, params={"status": "sleeping"})
        assert bad.status_code == 422


def test_a_multi_job_position_that_cannot_be_served_is_a_reset(settings: Settings, store: ClickHouseStore, stack: str):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    own = settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "events_partitions": 2})
    topics.ensure_topics(KafkaConnection.from_settings(own), own)
    producer = EventProducer(own)
    job = new_job()
    producer.send(*(event(job, s) for s in range(10)))
    partition = next(p for p in range(2) if _end(own, p) > 0)  # one job: all in one partition
    admin = AdminClient({"bootstrap.servers": own.kafka_bootstrap})
    futures = admin.delete_records([TopicPartition(own.topic(topics.EVENTS), partition, 5)])
    for future in futures.values():
        future.result(30)
    with gateway(own, store, sse_recent_window_s=0.0, sse_history_wait_s=1.0) as gw:
        gone = [0, 0]
        reader = Reader(gw.url, "/v1/events", headers={"Last-Event-ID": f"0:{gone[0]},1:{gone[1]}"}).start()
        reader.wait_for(1)
        assert reader.types() == ["reset"] and reader.data()[0]["reason"] == "position_expired"
        wait_until(lambda: len(reader.ids) >= 1, 10, message="a fresh position after the reset")
        producer.send(event(job, 20))
        reader.wait_for(2)
        assert reader.types() == ["reset", "progress"] and reader.data()[1]["seq"] == 20
        reader.close()

        future = Reader(gw.url, "/v1/events", headers={"Last-Event-ID": "0:999999,1:999999"}).start()
        future.wait_for(1)
        assert future.data()[0]["reason"] == "unknown_position"
        future.close()

        # within retention, but no sink writes this topic to ClickHouse: waiting for it ends in a reset
        kept = [5, 5]
        kept[1 - partition] = 0
        lagging = Reader(gw.url, "/v1/events", headers={"Last-Event-ID": f"0:{kept[0]},1:{kept[1]}"}).start()
        lagging.wait_for(1)
        assert lagging.data()[0]["reason"] == "history_lagging"
        lagging.close()


def _end(settings: Settings, partition: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "probe"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(settings.topic(topics.EVENTS), partition), timeout=10)[1]
    finally:
        consumer.close()


def test_a_sink_further_behind_than_the_window_is_waited_for_then_said(settings: Settings, store: ClickHouseStore):
    """No sink writes this topic: what the gateway's window does not hold is not in ClickHouse either."""
    import time

    own = settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}.", "events_partitions": 1})
    topics.ensure_topics(KafkaConnection.from_settings(own), own)
    producer = EventProducer(own)
    job, unknown = new_job(), new_job()
    a_minute_ago = int(time.time() * 1000) - 60_000  # older than the window: the gateway will not re-read it
    producer.send(
        event(job, 0, "queued"), event(job, 1, "running"), event(unknown, 0, "queued"), timestamp_ms=a_minute_ago
    )
    producer.send(event(job, 2))  # recent: in the window
    with gateway(own, store, sse_history_wait_s=1.0, sse_history_poll_s=0.2) as gw:
        # a job only ClickHouse could know, and the sink is behind: not a 404, a "retry later"
        lagging = httpx.get(f"{gw.url}/v1/jobs/{unknown}/events")
        assert lagging.status_code == 503 and int(lagging.headers["retry-after"]) >= 1
        reader = Reader(gw.url, f"/v1/jobs/{job}/events").start()
        reader.wait_for(1)
        assert reader.types() == ["reset"] and reader.data()[0]["reason"] == "history_lagging"
        producer.send(event(job, 3), event(job, TERMINAL_SEQ, "succeeded"))  # live goes on after the reset
        reader.wait_done()
        assert reader.seqs() == [3, TERMINAL_SEQ]


def test_window_keeps_a_queued_event_that_lands_after_running_and_drops_exact_repeats(settings: Settings):
    """Two producers write a job's events (the API its `queued`, a worker the rest), so `queued`
    may land after `running`; the window must keep it, or streams of the job see no start."""
    from sse_gateway.entry import Entry
    from sse_gateway.fanout import Fanout, FanoutConfig

    fanout = Fanout(KafkaConnection.from_settings(settings), FanoutConfig.from_settings(settings))
    fanout.partitions, fanout.next_offsets, fanout._window.start = 1, [0], [0]
    job = new_job()
    arriving = [
        event(job, 40, "running"),
        event(job, 0, "queued"),
        event(job, 40, "running"),
        event(job, TERMINAL_SEQ, "succeeded"),
        event(job, TERMINAL_SEQ, "succeeded"),
    ]
    fanout._dispatch_entries([Entry.from_event(e, 0, offset) for offset, e in enumerate(arriving)])
    assert sorted(e.seq for e in fanout.job_window(job)) == [0, 40, TERMINAL_SEQ]


# --- re-runs (at-least-once) ------------------------------------------------------------------------
def two_runs(job: str, tenant: str, *, first_finished: bool) -> tuple[list[JobEvent], list[JobEvent]]:
    """A job as a worker killed mid-batch leaves it: the first run (with its terminal event if it got
    that far), then the re-run on another worker: running again at attempt 1, progress from 0, and
    its own terminal event with the same seq."""

    def e(seq: int, type_: str, **data: Any) -> JobEvent:
        return event(job, seq, type_, tenant=tenant, **data)

    first = [
        e(0, "queued"),
        e(100, "running", attempt=1, worker="a"),
        e(101, "progress", progress=0.0),
        e(102, "progress", progress=1.0),
    ]
    if first_finished:
        first.append(e(TERMINAL_SEQ, "succeeded", result={"run": 1}))
    second = [
        e(5000, "running", attempt=1, worker="b"),
        e(5001, "progress", progress=0.0),
        e(5002, "progress", progress=0.5),
        e(5003, "progress", progress=1.0),
        e(TERMINAL_SEQ, "succeeded", result={"run": 2}),
    ]
    return first, second


SHOWN = [(0, "queued"), (100, "running"), (101, "progress"), (102, "progress"), (TERMINAL_SEQ, "succeeded")]


def test_a_rerun_is_invisible_live_late_and_after_resume_on_both_streams(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    """Clients never see a job restart: no second `running`, no progress going back, one terminal
    event — the first run's — on the per-job and the multi-job stream, live, joined late, resumed
    with Last-Event-ID, and replayed from ClickHouse."""
    api_keys, t = keys("rerun")
    tenant, auth = t["rerun"], bearer(t["rerun:key"])
    crashed, finished = new_job(), new_job()
    (crashed_1, crashed_2), (finished_1, finished_2) = (
        two_runs(crashed, tenant, first_finished=False),
        two_runs(finished, tenant, first_finished=True),
    )
    with gateway(settings, store, api_keys=api_keys) as gw:
        everything = Reader(gw.url, "/v1/events", headers=auth).start()
        wait_until(lambda: everything.ids, 30, message="the opening position")
        opening = everything.ids[0]
        events_out.send(*crashed_1, *finished_1)
        live = Reader(gw.url, f"/v1/jobs/{crashed}/events", headers=auth).start()
        live.wait_for(4)
        events_out.send(*crashed_2, *finished_2)
        live.wait_done()
        assert list(zip(live.seqs(), live.types(), strict=False)) == SHOWN
        assert [d["data"]["progress"] for d in live.data() if d["type"] == "progress"] == [0.0, 1.0]

        wait_until(
            lambda: len(stored_seqs(store, crashed)) == 9 and len(stored_seqs(store, finished)) == 9,
            60,
            message="both runs in ClickHouse",
        )
        for job in (crashed, finished):
            late = Reader(gw.url, f"/v1/jobs/{job}/events", headers=auth).start()
            late.wait_done()
            assert list(zip(late.seqs(), late.types(), strict=False)) == SHOWN, job
            result = late.data()[-1]["data"]["result"]
            assert result == {"run": 2 if job == crashed else 1}  # the terminal event clients saw first
            for last, rest in (("101", SHOWN[3:]), ("102", SHOWN[4:])):
                resumed = Reader(gw.url, f"/v1/jobs/{job}/events", headers=auth | {"Last-Event-ID": last}).start()
                resumed.wait_done()
                assert list(zip(resumed.seqs(), resumed.types(), strict=False)) == rest, (job, last)

        def per_job(reader: Reader) -> dict[str, list[tuple[int, str]]]:
            got: dict[str, list[tuple[int, str]]] = {}
            for d in reader.data():
                got.setdefault(d["job_id"], []).append((d["seq"], d["type"]))
            return got

        everything.wait_for(10)
        marker = event(new_job(), 0, "queued", tenant=tenant)  # nothing of the re-runs may come before it
        events_out.send(marker)
        everything.wait_for(11)
        assert per_job(everything) == {crashed: SHOWN, finished: SHOWN, marker.job_id: [(0, "queued")]}
        everything.close()
    with gateway(settings, store, api_keys=api_keys, sse_recent_window_s=0.0) as replaying:  # from ClickHouse
        resumed = Reader(replaying.url, "/v1/events", headers=auth | {"Last-Event-ID": opening}).start()
        resumed.wait_for(11)
        assert per_job(resumed) == {crashed: SHOWN, finished: SHOWN, marker.job_id: [(0, "queued")]}
        resumed.close()


def test_visibility_hides_what_moves_a_job_back_and_keeps_retries():
    from sse_gateway.entry import Entry
    from sse_gateway.visibility import Visibility

    job = new_job()
    arriving = [
        event(job, 1, "running", attempt=1),
        event(job, 2, "progress", progress=0.4),
        event(job, 3, "retrying", attempt=1),
        event(job, 4, "running", attempt=2),
        event(job, 5, "progress", progress=0.2),
        event(job, 6, "progress", progress=0.6),
        event(job, 7, "running", attempt=1),
        event(job, 0, "queued"),
        event(job, TERMINAL_SEQ, "failed"),
        event(job, 9, "progress", progress=0.9),
        event(job, TERMINAL_SEQ, "succeeded"),
    ]
    visibility = Visibility()
    shown = [e.seq for offset, e in enumerate(arriving) if visibility.admit(Entry.from_event(e, 0, offset))]
    assert shown == [1, 2, 3, 4, 6, 0, TERMINAL_SEQ]
    small = Visibility(capacity=1)
    small.admit(Entry.from_event(event(job, 1, "running"), 0, 0))
    small.admit(Entry.from_event(event(new_job(), 1, "running"), 0, 1))
    assert len(small) == 1 and small.admit(Entry.from_event(event(job, 2, "running"), 0, 2))  # forgotten
