"""WebSocket streams against the real broker and ClickHouse, read with the ``websockets`` client.

The same events are read over SSE and WebSocket and must agree; refusals are HTTP answers to the
upgrade (problem+json), never a socket that opens and closes.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import orjson
import pytest

from store.clickhouse import ClickHouseStore
from streams.settings import Settings
from tests.support import ROOT
from tests.support.conformance import assert_channels_agree, normalised
from tests.support.kafka import EventProducer
from tests.support.sse import TERMINAL_SEQ, Reader, app_state, bearer, event, gateway, keys, new_job, stored_seqs
from tests.support.waiting import wait_until
from tests.support.websocket import SocketReader, refusal

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def events_out(settings: Settings) -> EventProducer:
    return EventProducer(settings)


def test_a_job_socket_sends_history_then_live_like_sse_and_closes_1000_after_the_terminal_event(
    stack: str, store: ClickHouseStore, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 1, "running"), event(job, 5))
    wait_until(lambda: stored_seqs(store, job) == [0, 1, 5], 60, message="history in ClickHouse")
    events_out.send(event(job, 9))  # maybe only in the gateway's window yet

    socket = SocketReader(stack, f"/v1/jobs/{job}/ws").start()
    socket.wait_for(4)
    assert socket.seqs() == [0, 1, 5, 9]
    events_out.send(event(job, 12), event(job, 9), event(job, TERMINAL_SEQ, "succeeded", result={"ok": True}))
    socket.wait_done()
    assert (socket.close_code, socket.close_reason) == (1000, "finished")
    assert socket.seqs() == [0, 1, 5, 9, 12, TERMINAL_SEQ]  # the repeated seq 9 only once
    assert [m["id"] for m in socket.messages] == [str(s) for s in socket.seqs()]  # ids are the SSE ids
    assert socket.messages[-1]["data"]["data"] == {"result": {"ok": True}}

    sse = Reader(stack, f"/v1/jobs/{job}/events").start()  # now from ClickHouse: ts to the millisecond
    sse.wait_done()
    assert [(e.id, e.event, normalised(orjson.loads(e.data))) for e in sse.events] == [
        (m["id"], m["event"], normalised(m["data"])) for m in socket.messages
    ]


def test_a_job_socket_resumes_after_last_event_id_and_opens_and_closes_1000_after_the_end(
    stack: str, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 3, "running"), event(job, 7), event(job, 9))
    first = SocketReader(stack, f"/v1/jobs/{job}/ws").start()
    first.wait_for(3)
    first.close()
    assert first.messages[2]["id"] == "7"
    events_out.send(event(job, 12), event(job, TERMINAL_SEQ, "failed", error={"type": "X", "message": "m"}))

    by_query = SocketReader(stack, f"/v1/jobs/{job}/ws", params={"last_event_id": "7"}).start()
    by_header = SocketReader(stack, f"/v1/jobs/{job}/ws", headers={"Last-Event-ID": "7"}).start()
    for socket in (by_query, by_header):
        socket.wait_done()
        assert socket.seqs() == [9, 12, TERMINAL_SEQ] and socket.close_code == 1000
    after_end = SocketReader(stack, f"/v1/jobs/{job}/ws", params={"last_event_id": str(TERMINAL_SEQ)}).start()
    after_end.wait_done()
    assert after_end.messages == [] and after_end.close_code == 1000


def test_a_finished_job_whose_start_is_gone_says_reset_then_the_outcome(stack: str, events_out: EventProducer):
    job = new_job()  # no queued event anywhere: history is incomplete
    events_out.send(event(job, 40), event(job, TERMINAL_SEQ, "succeeded"))
    socket = SocketReader(stack, f"/v1/jobs/{job}/ws").start()
    socket.wait_done()
    assert [m["event"] for m in socket.messages] == ["reset", "succeeded"]
    assert socket.messages[0]["data"]["reason"] == "history_unavailable" and "id" not in socket.messages[0]
    assert socket.close_code == 1000


def test_refusals_are_http_problems_answered_before_the_upgrade(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("acme", "other")
    tenant, auth, other = t["acme"], bearer(t["acme:key"]), bearer(t["other:key"])
    job = new_job()
    events_out.send(event(job, 0, "queued", tenant=tenant))
    with gateway(settings, store, api_keys=api_keys, sse_max_connections_per_tenant=1) as gw:

        def token(job_id: str | None = None) -> str:
            answer = httpx.post(f"{gw.url}/v1/stream-tokens", json={"job_id": job_id}, headers=auth)
            return answer.json()["token"]

        cases = [
            ({}, {}, f"/v1/jobs/{job}/ws", 401, None),
            (bearer("not-a-key-at-all-xx"), {}, f"/v1/jobs/{job}/ws", 401, None),
            ({}, {"token": "a.b"}, f"/v1/jobs/{job}/ws", 401, None),
            ({}, {"token": "é" * 1000}, "/v1/ws", 401, None),
            ({}, {"token": "x" * 3000 + ".y"}, "/v1/ws", 401, None),
            ({}, {"token": token(new_job())}, f"/v1/jobs/{job}/ws", 403, None),
            ({}, {"token": token(job)}, "/v1/ws", 403, None),
            (other, {}, f"/v1/jobs/{job}/ws", 404, None),  # another tenant's job looks like no job
            (auth, {}, f"/v1/jobs/{new_job()}/ws", 404, None),
            (auth, {"last_event_id": "seven"}, f"/v1/jobs/{job}/ws", 400, "last_event_id"),
            (auth, {"last_event_id": "-5"}, f"/v1/jobs/{job}/ws", 400, "last_event_id"),
            (auth, {"last_event_id": "9" * 5000}, f"/v1/jobs/{job}/ws", 400, "last_event_id"),
            (auth, {"last_event_id": "٣"}, "/v1/ws", 400, "last_event_id"),
            (auth, {"last_event_id": "0:1"}, "/v1/ws", 400, "last_event_id"),
            (auth, {"status": "sleeping"}, "/v1/ws", 422, "status"),
            (auth, {"kind": ",".join(["k"] * 1001)}, "/v1/ws", 422, "kind"),
        ]
        for headers, params, path, status, field in cases:
            refused = refusal(gw.url, path, headers, **params)
            assert refused.status == status, (path, params, refused)
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.body["status"] == status
            if field is not None:
                assert refused.body["errors"][0]["field"] == field
            if status == 401:
                assert "www-authenticate" in refused.headers

        open_one = SocketReader(gw.url, "/v1/ws", params={"token": token()}).start()  # ?token= opens
        wait_until(lambda: open_one.ids(), 30, message="the opening position")
        too_many = refusal(gw.url, f"/v1/jobs/{job}/ws", auth)  # one stream per tenant here
        assert too_many.status == 429 and too_many.body["scope"] == "tenant" and "retry-after" in too_many.headers
        open_one.close()
        state = app_state(gw)
        wait_until(lambda: state.sse_limits.total == 0, 30, message="the slot released")


def test_the_tenant_socket_filters_and_resumes_by_position(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("acme")
    tenant, auth = t["acme"], bearer(t["acme:key"])
    a, b, c = new_job(), new_job(), new_job()
    with gateway(settings, store, api_keys=api_keys) as gw:
        everything = SocketReader(gw.url, "/v1/ws", headers=auth).start()
        by_kind = SocketReader(gw.url, "/v1/ws", headers=auth, params={"kind": "k.two"}).start()
        by_status = SocketReader(gw.url, "/v1/ws", headers=auth, params={"status": "running,succeeded"}).start()
        by_job = SocketReader(gw.url, "/v1/ws", headers=auth, params={"job_id": [a, c]}).start()
        sse = Reader(gw.url, "/v1/events", headers=auth).start()
        sockets = (everything, by_kind, by_status, by_job)
        wait_until(lambda: all(s.ids() for s in sockets) and sse.ids, 30, message="streams open")
        assert all(s.messages[0]["event"] == "position" for s in sockets)
        events_out.send(
            event(a, 0, "queued", tenant, "k.one"),
            event(b, 0, "queued", tenant, "k.two"),
            event(c, 0, "queued", tenant, "k.two"),
            event(a, 1, "running", tenant, "k.one"),
            event(b, 1, "running", tenant, "k.two"),
            event(b, 2, "progress", tenant, "k.two"),
            event(c, 1, "retrying", tenant, "k.two"),
            event(a, TERMINAL_SEQ, "succeeded", tenant, "k.one"),
            event(c, TERMINAL_SEQ, "failed", tenant, "k.two"),
        )
        everything.wait_for(9)
        sse.wait_for(9)

        def seen(socket: SocketReader) -> set[tuple[str, int]]:
            return {(m["data"]["job_id"], m["data"]["seq"]) for m in socket.events()}

        wait_until(
            lambda: len(by_kind.events()) >= 6 and len(by_status.events()) >= 5 and len(by_job.events()) >= 6, 30
        )
        assert seen(by_kind) == {(b, 0), (c, 0), (b, 1), (b, 2), (c, 1), (c, TERMINAL_SEQ)}
        assert seen(by_status) == {(a, 1), (b, 1), (b, 2), (c, 1), (a, TERMINAL_SEQ)}
        assert seen(by_job) == {(a, 0), (c, 0), (a, 1), (c, 1), (a, TERMINAL_SEQ), (c, TERMINAL_SEQ)}
        # the same ids, types and data as the SSE stream
        assert [(m["id"], m["event"], m["data"]) for m in everything.events()] == [
            (e.id, e.event, orjson.loads(e.data)) for e in sse.events
        ]
        # resume by the id of the third filtered message: the rest once, then live, with the filter
        resumed = SocketReader(
            gw.url, "/v1/ws", headers=auth, params={"kind": "k.two", "last_event_id": by_kind.events()[2]["id"]}
        ).start()
        resumed.wait_for(3)
        events_out.send(event(a, 7, "progress", tenant, "k.one"), event(b, 3, "progress", tenant, "k.two"))
        resumed.wait_for(4)
        already = {(m["data"]["job_id"], m["data"]["seq"]) for m in by_kind.events()[:3]}
        assert seen(resumed) == seen(by_kind) - already | {(b, 3)} and len(resumed.events()) == 4
        for socket in (*sockets, resumed):
            socket.close()
        sse.close()
        state = app_state(gw)
        wait_until(lambda: state.sse_limits.total == 0 and state.fanout.subscribers == 0, 30)


def test_a_slow_socket_is_closed_4000_and_others_get_everything(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    job = new_job()
    events_out.send(event(job, 0, "queued"))
    pad = "x" * 4000  # big events fill the slow client's socket buffers quickly
    with gateway(settings, store, sse_queue_size=50, sse_send_timeout_s=120) as gw:
        state = app_state(gw)
        fast = SocketReader(gw.url, f"/v1/jobs/{job}/ws").start()
        fast.wait_for(1)
        # no compression: the padding would shrink to nothing and never fill the socket's buffers
        slow = SocketReader(gw.url, f"/v1/jobs/{job}/ws", max_queue=1, read=False, compression=None).start()
        wait_until(lambda: state.fanout.subscribers == 2, 30, message="both clients subscribed")
        seq = 0
        for _ in range(200):  # paced by the fast client
            events_out.send(*(event(job, seq + i + 1, pad=pad) for i in range(40)))
            seq += 40
            fast.wait_for(seq + 1)
            if state.fanout.overflows:
                break
        assert state.fanout.overflows == 1, "the slow client was never dropped"
        events_out.send(event(job, TERMINAL_SEQ, "succeeded"))
        fast.wait_done()
        assert fast.seqs() == list(range(seq + 1)) + [TERMINAL_SEQ] and fast.close_code == 1000

        slow.reading.set()  # now it reads: what was sent before, then the close
        slow.wait_done()
        assert (slow.close_code, slow.close_reason) == (4000, "slow_client")
        assert len(slow.events()) < seq
        wait_until(lambda: state.sse_limits.total == 0, 30, message="connection slots released")


def test_one_jobs_events_agree_across_sse_websocket_and_clickhouse(
    client: httpx.Client, stack: str, store: ClickHouseStore
):
    answer = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": list(range(500))}})
    assert answer.status_code == 202
    legs = assert_channels_agree(stack, store, "default", answer.json()["job_id"])
    assert [e.type for e in legs["sse"]][:2] == ["queued", "running"] and legs["sse"][-1].type == "succeeded"


def test_the_readmes_websockets_snippet_follows_a_job_to_its_end(
    stack: str, events_out: EventProducer, capsys: pytest.CaptureFixture[str]
):
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- follow-ws\.py:.*?-->\n```python\n(.*?)```", readme, re.S)
    assert found, "README.md lost its follow-ws.py block"
    namespace: dict = {"__name__": "readme"}
    exec(compile(found.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own README
    job = new_job()
    events_out.send(event(job, 0, "queued"), event(job, 1, "running"), event(job, 4))
    events_out.send(event(job, TERMINAL_SEQ, "succeeded", result={"answer": 42}))
    terminal = asyncio.run(asyncio.wait_for(namespace["follow"](stack, job), 60))
    assert terminal["type"] == "succeeded" and terminal["data"] == {"result": {"answer": 42}}
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[0] for line in printed] == ["queued", "running", "progress", "succeeded"]
