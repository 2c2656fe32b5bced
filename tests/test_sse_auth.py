"""Who may stream what: API keys and tenant isolation, stream tokens, connection limits."""

from __future__ import annotations

import httpx
import pytest

from store.clickhouse import ClickHouseStore
from streams.settings import Settings
from tests.support.kafka import EventProducer
from tests.support.sse import TERMINAL_SEQ, Reader, app_state, bearer, event, gateway, keys, new_job
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def events_out(settings: Settings) -> EventProducer:
    return EventProducer(settings)


def test_a_tenant_streams_only_its_own_jobs(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("alice", "bob")
    alice, bob = bearer(t["alice:key"]), bearer(t["bob:key"])
    job_a, job_b = new_job(), new_job()
    with gateway(settings, store, api_keys=api_keys) as gw:
        alice_all = Reader(gw.url, "/v1/events", headers=alice).start()
        bob_all = Reader(gw.url, "/v1/events", headers=bob).start()
        wait_until(lambda: alice_all.ids and bob_all.ids, 30, message="streams open")
        events_out.send(
            event(job_a, 0, "queued", tenant=t["alice"]),
            event(job_b, 0, "queued", tenant=t["bob"]),
            event(job_a, TERMINAL_SEQ, "succeeded", tenant=t["alice"]),
        )
        alice_all.wait_for(2)
        bob_all.wait_for(1)

        mine = Reader(gw.url, f"/v1/jobs/{job_a}/events", headers=alice).start()
        mine.wait_done()
        assert mine.seqs() == [0, TERMINAL_SEQ]
        for path in (f"/v1/jobs/{job_a}/events", f"/v1/jobs/{job_a}/events?last_event_id=0"):
            other = httpx.get(gw.url + path, headers=bob)  # exactly like a job that does not exist
            assert other.status_code == 404 and other.json()["title"] == "Job not found"
        assert httpx.get(f"{gw.url}/v1/jobs/{job_a}/events").status_code == 401
        assert httpx.get(f"{gw.url}/v1/events", headers=bearer("not-a-key-of-anyone")).status_code == 401

        events_out.send(event(job_b, 1, "running", tenant=t["bob"]))  # a marker: bob's stream is up to date
        bob_all.wait_for(2)
        assert {d["job_id"] for d in bob_all.data()} == {job_b}
        assert {d["job_id"] for d in alice_all.data()} == {job_a}
        alice_all.close()
        bob_all.close()


def test_stream_tokens_scope_expiry_and_only_on_stream_routes(
    settings: Settings, store: ClickHouseStore, stack: str, events_out: EventProducer
):
    api_keys, t = keys("alice")
    alice = bearer(t["alice:key"])
    job, other_job = new_job(), new_job()
    events_out.send(
        event(job, 0, "queued", tenant=t["alice"]),
        event(job, 3, "running", tenant=t["alice"]),
        event(other_job, 0, "queued", tenant=t["alice"]),
    )
    with gateway(settings, store, roles=frozenset({"api", "gateway"}), api_keys=api_keys, stream_token_ttl_s=600) as gw:
        assert httpx.post(f"{gw.url}/v1/stream-tokens").status_code == 401  # minting needs the API key
        issued = httpx.post(f"{gw.url}/v1/stream-tokens", headers=alice, json={"job_id": job})
        assert issued.status_code == 201
        body = issued.json()
        assert body["tenant"] == t["alice"] and body["job_id"] == job and 590 <= body["expires_in_s"] <= 600
        token = body["token"]
        assert body["events"] == f"/v1/jobs/{job}/events?token={token}"

        # what a browser's EventSource does: no headers, the token in the URL
        reader = Reader(gw.url, body["events"]).start()
        reader.wait_for(2)
        assert reader.seqs() == [0, 3]
        reader.close()
        assert httpx.get(f"{gw.url}/v1/jobs/{other_job}/events", params={"token": token}).status_code == 403
        assert httpx.get(f"{gw.url}/v1/events", params={"token": token}).status_code == 403
        # tokens are for streams only
        for path in (f"/v1/jobs/{job}", f"/v1/jobs/{job}/result"):
            refused = httpx.get(gw.url + path, params={"token": token})
            assert refused.status_code == 401, path
        assert httpx.post(f"{gw.url}/v1/stream-tokens", params={"token": token}).status_code == 401

        tenant_token = httpx.post(f"{gw.url}/v1/stream-tokens", headers=alice).json()["token"]
        everything = Reader(gw.url, "/v1/events", params={"token": tenant_token}).start()
        assert everything.status == 200
        everything.close()

        tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
        refused = httpx.get(f"{gw.url}/v1/jobs/{job}/events", params={"token": tampered})
        assert refused.status_code == 401 and refused.json()["reason"] == "bad signature"
        assert httpx.post(f"{gw.url}/v1/stream-tokens", headers=alice, json={"ttl_s": 601}).status_code == 422

        short = httpx.post(f"{gw.url}/v1/stream-tokens", headers=alice, json={"job_id": job, "ttl_s": 1}).json()
        expired = wait_until(
            lambda: (
                (r := refusal(f"{gw.url}/v1/jobs/{job}/events", {"token": short["token"]}))
                and r.status_code == 401
                and r
            ),
            30,
            message="the short token to expire",
        )
        assert expired.json()["reason"] == "expired" and expired.headers["content-type"] == "application/problem+json"


def refusal(url: str, params: dict[str, str]) -> httpx.Response | None:
    """The response if the stream was refused; None if it opened (then it is closed again)."""
    with httpx.stream("GET", url, params=params, timeout=30) as response:
        if response.status_code == 200:
            return None
        response.read()
        return response


def test_connection_limits_answer_429_and_disconnects_free_their_slot(
    settings: Settings, store: ClickHouseStore, stack: str
):
    api_keys, t = keys("alice", "bob")
    alice, bob = bearer(t["alice:key"]), bearer(t["bob:key"])
    with gateway(settings, store, api_keys=api_keys, sse_max_connections=3, sse_max_connections_per_tenant=2) as gw:
        state = app_state(gw)
        open_ = [Reader(gw.url, "/v1/events", headers=alice).start() for _ in range(2)]
        assert all(r.status == 200 for r in open_)
        refused = httpx.get(f"{gw.url}/v1/events", headers=alice)
        assert refused.status_code == 429 and refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["scope"] == "tenant" and int(refused.headers["retry-after"]) >= 1
        open_.append(Reader(gw.url, "/v1/events", headers=bob).start())
        assert open_[-1].status == 200
        refused = httpx.get(f"{gw.url}/v1/events", headers=bob)
        assert refused.status_code == 429 and refused.json()["scope"] == "process"
        assert state.sse_limits.total == 3 and state.fanout.subscribers == 3

        open_[0].close()  # a client hangs up: noticed at once, its slot and subscription freed
        wait_until(
            lambda: state.sse_limits.total == 2 and state.fanout.subscribers == 2,
            30,
            message="the closed stream to be freed",
        )
        again = Reader(gw.url, "/v1/events", headers=alice).start()
        assert again.status == 200
        for reader in (*open_[1:], again):
            reader.close()
        wait_until(
            lambda: state.sse_limits.total == 0 and state.fanout.subscribers == 0, 30, message="every stream freed"
        )
