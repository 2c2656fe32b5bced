"""The Python client (jobstream.client) and `jobstream watch`, against the real gateway."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import orjson
import pytest

from jobstream.client import EventStream, StreamError, StreamEvent, watch_job
from store.clickhouse import ClickHouseStore
from streams.settings import Settings
from tests.support import ROOT
from tests.support.kafka import EventProducer
from tests.support.sse import TERMINAL_SEQ, event, gateway, new_job
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def events_out(settings: Settings) -> EventProducer:
    return EventProducer(settings)


def _follow(stream: EventStream) -> tuple[list[StreamEvent], threading.Thread]:
    """Iterate ``stream`` on a thread into a list; it stops when the stream ends or its client is closed."""
    got: list[StreamEvent] = []

    def run() -> None:
        try:
            got.extend(stream)
        except RuntimeError:  # "Cannot send a request, as the client has been closed": the test is over
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return got, thread


def test_client_resumes_a_job_stream_by_itself_across_server_side_cuts(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"))
    with gateway(settings, store, sse_max_stream_s=1.0, sse_retry_ms=50) as gw:
        with httpx.Client(base_url=gw.url, timeout=httpx.Timeout(10, read=60)) as http:
            stream = EventStream(http, f"/v1/jobs/{job}/events")
            got, thread = _follow(stream)
            wait_until(lambda: len(got) == 1, 30, message="the queued event")
            for i, seq in enumerate((10, 20, 30), start=1):  # the server cuts every stream after 1 s
                wait_until(lambda: stream.reconnects >= i, 30, message=f"reconnect {i}")
                events_out.send(event(job, seq))
                wait_until(lambda: len(got) == i + 1, 30, message=f"seq {seq}")
            events_out.send(event(job, TERMINAL_SEQ, "succeeded", result={"n": 1}))
            thread.join(30)
    assert not thread.is_alive()
    assert [int(e.id) for e in got] == [0, 10, 20, 30, TERMINAL_SEQ]
    assert got[-1].terminal and got[-1].data["data"]["result"] == {"n": 1}


def test_client_resumes_the_multi_job_stream_by_position_and_reports_refusals(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    job = new_job()
    with gateway(settings, store, sse_max_stream_s=0.5, sse_retry_ms=20) as gw:
        state = gw.server.config.app.state
        with httpx.Client(base_url=gw.url, timeout=httpx.Timeout(10, read=60)) as http:
            stream = EventStream(http, "/v1/events", {"job_id": [job]}, ends_on_terminal=False)
            got, _ = _follow(stream)
            wait_until(lambda: state.fanout.subscribers == 1, 30, message="the stream to open")
            for i, seq in enumerate((0, 5, 9)):
                wait_until(lambda: stream.reconnects >= i, 30, message=f"reconnect {i}")
                events_out.send(event(job, seq, "queued" if seq == 0 else "progress"))
                wait_until(lambda: len(got) == i + 1, 30, message=f"seq {seq}")
            assert [(e.type, e.data["seq"]) for e in got] == [("queued", 0), ("progress", 5), ("progress", 9)]
            assert stream.last_event_id == got[-1].id or "," in (stream.last_event_id or "")
        with pytest.raises(StreamError) as refused:
            list(watch_job(gw.url, new_job(), max_attempts=1))
        assert refused.value.status == 404 and refused.value.problem["title"] == "Job not found"


def _watch(url: str, job: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", "watch", job, "--url", url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_jobstream_watch_follows_a_real_job_to_its_result(client: httpx.Client, stack: str):
    job = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, 3, 4]}}).json()["job_id"]
    done = _watch(stack, job)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["type"] == "queued" and lines[-1]["type"] == "succeeded"
    assert lines[-1]["data"]["data"]["result"]["mean"] == 2.5
    ids = [int(line["id"]) for line in lines]
    assert ids == sorted(set(ids))


def test_jobstream_watch_exits_1_for_a_failed_job_and_2_for_an_unknown_one(stack: str, events_out: EventProducer):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, TERMINAL_SEQ, "failed", error={"type": "E", "message": "m"}))
    assert _watch(stack, job).returncode == 1
    unknown = _watch(stack, new_job())
    assert unknown.returncode == 2 and "404" in unknown.stderr
