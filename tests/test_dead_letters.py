"""``GET /v1/dead-letters`` and ``POST /v1/dead-letters/{id}:redrive`` against the real stack: requests
a real worker dead-letters, listed per tenant, re-driven as new jobs that run to their result."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import orjson
import pytest

from store.clickhouse import ClickHouseStore
from streams.settings import Settings
from tests.support.kafka import produce_requests
from tests.support.sse import bearer, gateway, keys
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

PROBLEM = "application/problem+json"


def unreadable(tenant: str = "default", **fields: Any) -> tuple[str, bytes]:
    """A request a worker cannot decode (priority is not a number) but whose kind and params are readable."""
    job_id = uuid.uuid4().hex
    body = {
        "job_id": job_id,
        "tenant": tenant,
        "kind": "stats.describe",
        "params": {"values": [1, 2, 3, 4]},
        "priority": "high",
        **fields,
    }
    return job_id, orjson.dumps(body)


def letter_of(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Wait for the dead letter of ``job_id`` to be listed."""

    def find() -> dict[str, Any] | None:
        page = client.get("/v1/dead-letters", params={"limit": 1000}, headers=headers or {}).json()
        return next((d for d in page["dead_letters"] if d["job_id"] == job_id), None)

    return wait_until(find, 90, 0.2, message=f"the dead letter of {job_id}")  # type: ignore[return-value]


def finished(client: httpx.Client, job_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers or {}).json()
        return job if job.get("status") in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, 90, 0.2, message=f"job {job_id} to finish")  # type: ignore[return-value]


def test_an_undecodable_request_is_listed_and_redriven_as_a_new_job(client: httpx.Client, settings: Settings):
    job_id, value = unreadable()
    produce_requests(settings, value)
    letter = letter_of(client, job_id)
    assert letter["reason"] == "undecodable" and letter["kind"] == "stats.describe"
    assert "priority" in letter["error"]
    assert set(letter["source"]) == {"partition", "offset"} and letter["source"]["offset"] >= 0
    assert letter["created_at"] and letter["links"]["redrive"] == f"/v1/dead-letters/{letter['id']}:redrive"
    # the worker failed the original job, so its client was not left waiting
    assert finished(client, job_id)["error"]["type"] == "undecodable"

    again = client.post(letter["links"]["redrive"])
    assert again.status_code == 202, again.text
    new = again.json()
    assert new["job_id"] != job_id and new["redrive_of"] == letter["id"] and new["status"] == "queued"
    assert again.headers["location"] == new["links"]["self"] == f"/v1/jobs/{new['job_id']}"
    assert client.get(new["links"]["self"]).status_code == 200  # read-your-writes
    done = finished(client, new["job_id"])
    assert done["status"] == "succeeded" and done["result"]["mean"] == 2.5

    fixed = client.post(letter["links"]["redrive"], json={"params": {"values": [10, 20]}})
    assert fixed.status_code == 202, fixed.text
    assert finished(client, fixed.json()["job_id"])["result"]["mean"] == 15


def test_a_dead_letter_without_readable_params_needs_fixed_ones(client: httpx.Client, settings: Settings):
    job_id, value = unreadable(params=[1, 2, 3])
    produce_requests(settings, value)
    path = letter_of(client, job_id)["links"]["redrive"]
    bare = client.post(path)
    assert bare.status_code == 422 and bare.headers["content-type"] == PROBLEM
    assert bare.json()["errors"] == [{"field": "params", "reason": "required for this dead letter"}]
    wrong = client.post(path, json={"params": {"values": ["x", 1]}})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"].startswith("params.values")
    overflow = client.post(path, json={"params": {"values": [2**70]}})
    assert overflow.status_code == 422 and overflow.json()["errors"][0]["field"].startswith("params")
    good = client.post(path, json={"params": {"values": [3, 5]}})
    assert good.status_code == 202, good.text
    assert finished(client, good.json()["job_id"])["result"]["mean"] == 4


def test_the_list_pages_newest_first(client: httpx.Client, settings: Settings):
    ours = [unreadable() for _ in range(3)]
    produce_requests(settings, *(value for _, value in ours))
    for job, _ in ours:  # each in its own partition: the worker may dead-letter them in any order
        letter_of(client, job)
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get("/v1/dead-letters", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["dead_letters"]) <= 2
        seen += page["dead_letters"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    ids = [d["id"] for d in seen]
    assert len(ids) == len(set(ids))
    assert {job for job, _ in ours} <= {d["job_id"] for d in seen}
    order = [(d["created_at"], int(d["id"].split("-")[0]), int(d["id"].split("-")[1])) for d in seen]
    assert order == sorted(order, reverse=True)


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": 10**30}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"cursor": "not a cursor"}, "cursor"),
        ({"cursor": "ünïcødé"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"[1,2]").decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"[-1,0,0]").decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b"[1e400,0,0]").decode()}, "cursor"),
        ({"redriven": "maybe"}, "redriven"),
        ({"redriven": "ünïcødé"}, "redriven"),
        ({"redriven": "1" * 5000}, "redriven"),
    ],
)
def test_bad_list_parameters_are_problems_naming_them(client: httpx.Client, params: dict[str, Any], field: str):
    answer = client.get("/v1/dead-letters", params=params)
    assert answer.status_code in (400, 422) and answer.headers["content-type"] == PROBLEM, answer.text
    assert any(field in e["field"] for e in answer.json()["errors"]), answer.json()


@pytest.mark.parametrize(
    "dead_letter_id", ["0-999999999", "999999-0", "ünïcødé", "0-" + "9" * 40, "x" * 5000, "-", "0--1", "1e3-1"]
)
def test_an_unknown_dead_letter_is_404_naming_the_id(client: httpx.Client, dead_letter_id: str):
    answer = client.post(f"/v1/dead-letters/{dead_letter_id}:redrive")
    assert answer.status_code == 404 and answer.headers["content-type"] == PROBLEM, answer.text
    assert answer.json()["errors"] == [{"field": "id", "reason": "unknown dead letter"}]


def test_bad_redrive_bodies_are_problems_naming_the_field(client: httpx.Client, settings: Settings):
    job_id, value = unreadable()
    produce_requests(settings, value)
    path = letter_of(client, job_id)["links"]["redrive"]
    cases: list[tuple[bytes, str, int, str | None]] = [
        (b"{", "application/json", 400, None),
        (b'{"params": [1, 2]}', "application/json", 422, "params"),
        (b'{"params": "x"}', "application/json", 422, "params"),
        (b'{"nope": 1}', "application/json", 422, "nope"),
        (b"[]", "application/json", 422, "(body)"),
        (b'{"params": {"values": [1]}}', "text/plain", 415, None),
        ('{"params": {"välues": [1]}}'.encode(), "application/json", 422, "params"),
        (b'{"params": {"values": [1e400]}}', "application/json", 422, "params"),
    ]
    for body, content_type, status, field in cases:
        answer = client.post(path, content=body, headers={"Content-Type": content_type})
        assert answer.status_code == status and answer.headers["content-type"] == PROBLEM, (body, answer.text)
        if field is not None:
            assert any(e["field"].startswith(field) for e in answer.json()["errors"]), (body, answer.json())


def test_dead_letters_are_tenant_scoped_and_operators_see_every_tenants(
    stack: str, settings: Settings, store: ClickHouseStore
):
    api_keys, t = keys("alice", "bob", "ops")
    alice, bob, ops = bearer(t["alice:key"]), bearer(t["bob:key"]), bearer(t["ops:key"])
    with gateway(settings, store, frozenset({"api"}), api_keys=api_keys, dead_letter_tenants=t["ops"]) as api:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            assert client.get("/v1/dead-letters").status_code == 401
            job_id, value = unreadable(tenant=t["alice"])
            garbage = b"\xff\xfe not json " + uuid.uuid4().hex.encode()
            produce_requests(settings, value, garbage)
            letter = letter_of(client, job_id, alice)
            assert letter["tenant"] == t["alice"]

            def garbage_letter() -> dict[str, Any] | None:
                page = client.get("/v1/dead-letters", params={"limit": 1000}, headers=ops).json()["dead_letters"]
                return next((d for d in page if d["job_id"] is None and d["tenant"] is None), None)

            unowned = wait_until(garbage_letter, 90, 0.2, message="the unreadable dead letter")
            assert isinstance(unowned, dict) and unowned["kind"] is None
            assert letter["id"] in {d["id"] for d in client.get("/v1/dead-letters", headers=ops).json()["dead_letters"]}
            for other in (alice, bob):  # a tenant sees its own only: no one else's, no unowned ones
                listed = client.get("/v1/dead-letters", params={"limit": 1000}, headers=other).json()["dead_letters"]
                assert all(d["tenant"] == (t["alice"] if other is alice else t["bob"]) for d in listed)
            refused = client.post(f"/v1/dead-letters/{letter['id']}:redrive", headers=bob)
            assert refused.status_code == 404 and refused.json()["errors"][0]["field"] == "id"
            assert client.post(f"/v1/dead-letters/{unowned['id']}:redrive", headers=alice).status_code == 404
            no_kind = client.post(f"/v1/dead-letters/{unowned['id']}:redrive", headers=ops)
            assert no_kind.status_code == 409 and no_kind.json()["errors"][0]["field"] == "kind"
            # an operator re-drives alice's dead letter: the new job is alice's
            redriven = client.post(f"/v1/dead-letters/{letter['id']}:redrive", headers=ops)
            assert redriven.status_code == 202, redriven.text
            new_job = redriven.json()["job_id"]
            assert client.get(f"/v1/jobs/{new_job}", headers=alice).status_code == 200
            assert client.get(f"/v1/jobs/{new_job}", headers=ops).status_code == 404
            assert finished(client, new_job, alice)["result"]["mean"] == 2.5


def test_a_redrive_is_recorded_filtered_and_keyed_and_a_fresh_api_process_knows_it(
    client: httpx.Client, settings: Settings, store: ClickHouseStore
):
    job_id, value = unreadable()
    produce_requests(settings, value)
    letter = letter_of(client, job_id)
    assert letter["redriven"] is None
    listed = {
        d["id"]
        for d in client.get("/v1/dead-letters", params={"limit": 1000, "redriven": "false"}).json()["dead_letters"]
    }
    assert letter["id"] in listed
    key = f"redrive-{uuid.uuid4().hex}"
    first = client.post(letter["links"]["redrive"], headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    new_job = first.json()["job_id"]
    again = client.post(letter["links"]["redrive"], headers={"Idempotency-Key": key})  # a retry: the same job
    assert again.status_code == 200 and again.json()["job_id"] == new_job and again.json()["redrive_of"] == letter["id"]
    assert again.headers["location"] == f"/v1/jobs/{new_job}"
    other = client.post(letter["links"]["redrive"], json={"params": {"values": [9]}}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.headers["content-type"] == PROBLEM, other.text
    assert other.json()["errors"] == [{"field": "Idempotency-Key", "reason": "reused with a different request"}]
    assert finished(client, new_job)["result"]["mean"] == 2.5

    def marked(api: httpx.Client, redriven: str | None) -> dict[str, Any] | None:
        query = {"limit": 1000, **({"redriven": redriven} if redriven else {})}
        return next(
            (d for d in api.get("/v1/dead-letters", params=query).json()["dead_letters"] if d["id"] == letter["id"]),
            None,
        )

    shown = marked(client, None)
    assert shown is not None and shown["redriven"]["job_id"] == new_job and shown["redriven"]["job_ids"] == [new_job]
    assert shown["links"]["redriven_job"] == f"/v1/jobs/{new_job}" and shown["redriven"]["redriven_at"]
    assert marked(client, "true") is not None and marked(client, "false") is None
    # a new API process reads the record back from Kafka: the mark and the key survive a restart
    with gateway(settings, store, frozenset({"api"})) as api:
        with httpx.Client(base_url=api.url, timeout=30) as fresh:
            remembered = marked(fresh, "true")
            assert remembered is not None and remembered["redriven"]["job_ids"] == [new_job]
            assert marked(fresh, "false") is None
            retry = fresh.post(letter["links"]["redrive"], headers={"Idempotency-Key": key})
            assert retry.status_code == 200 and retry.json()["job_id"] == new_job
            assert (
                fresh.post(
                    letter["links"]["redrive"], json={"params": {"values": [1]}}, headers={"Idempotency-Key": key}
                ).status_code
                == 409
            )
    # no second job was made by the retries: one running of the new job id in the store
    events = store.query("SELECT count() FROM job_events WHERE job_id = {j:String} AND type = 'queued'", {"j": new_job})
    assert events[0][0] == 1
    # without a key, a re-drive makes another job, and the letter lists both
    plain = client.post(letter["links"]["redrive"])
    assert plain.status_code == 202 and plain.json()["job_id"] != new_job
    latest = marked(client, "true")
    assert latest is not None and latest["redriven"]["job_ids"] == [new_job, plain.json()["job_id"]]
    assert latest["redriven"]["job_id"] == plain.json()["job_id"]


@pytest.mark.parametrize(
    "key",
    ["", "with space", "x" * 256, "ünïcødé", "tab\there"],
)
def test_a_bad_redrive_idempotency_key_is_400_naming_it(client: httpx.Client, settings: Settings, key: str):
    answer = client.post("/v1/dead-letters/0-0:redrive", headers={"Idempotency-Key": key.encode("utf-8")})  # type: ignore[dict-item]
    assert answer.status_code == 400 and answer.headers["content-type"] == PROBLEM, answer.text
    assert answer.json()["errors"] == [{"field": "Idempotency-Key", "reason": "empty, too long, or not visible ASCII"}]


def test_a_keyed_redrive_of_an_unknown_or_other_tenants_letter_is_404(
    stack: str, settings: Settings, store: ClickHouseStore
):
    api_keys, t = keys("alice", "bob")
    alice, bob = bearer(t["alice:key"]), bearer(t["bob:key"])
    with gateway(settings, store, frozenset({"api"}), api_keys=api_keys) as api:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            job_id, value = unreadable(tenant=t["alice"])
            produce_requests(settings, value)
            letter = letter_of(client, job_id, alice)
            key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
            refused = client.post(f"/v1/dead-letters/{letter['id']}:redrive", headers={**bob, **key})
            assert refused.status_code == 404 and refused.json()["errors"] == [
                {"field": "id", "reason": "unknown dead letter"}
            ]
            assert client.post("/v1/dead-letters/0-999999999:redrive", headers={**alice, **key}).status_code == 404
            assert client.get("/v1/dead-letters", params={"redriven": "maybe"}, headers=alice).status_code == 422
            mine = client.post(f"/v1/dead-letters/{letter['id']}:redrive", headers={**alice, **key})
            assert mine.status_code == 202, mine.text
            # bob's same key is his own: it names no re-drive of his, and alice's letter stays hidden from him
            assert client.post(f"/v1/dead-letters/{letter['id']}:redrive", headers={**bob, **key}).status_code == 404
            bobs = client.get("/v1/dead-letters", params={"redriven": "true", "limit": 1000}, headers=bob).json()
            assert letter["id"] not in {d["id"] for d in bobs["dead_letters"]}
