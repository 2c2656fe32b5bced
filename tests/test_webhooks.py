"""Webhooks against the real stack and a real local receiver: signed, retried, recorded, redelivered,
rotated, refused for private addresses, and nothing lost across a kill -9 of the notifier."""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from edge.webhook_url import WebhookPolicy, WebhookRefused, blocked_address, check_url
from ingest_api.submit import InvalidSubmission, JobSubmission, prepare
from notifier.records import Delivery, webhook_id
from notifier.sender import Sender, SenderConfig, Verdict
from notifier.tenant_secrets import WebhookSecrets
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.events import EventType, JobEvent
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.wire import webhook_header, webhook_in
from tests.support.conformance import Delivered, assert_channels_agree, normalised
from tests.support.kafka import event_headers, produce
from tests.support.receiver import Receiver
from tests.support.service_process import ServiceProcess, service_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

STRICT = WebhookPolicy(allow_private=False, max_url_length=2048)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver().start()
    yield receiver
    receiver.stop()


def path() -> str:
    return f"/hook/{uuid.uuid4().hex}"


def submit(client: httpx.Client, **fields: Any) -> str:
    response = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, 3]}, **fields})
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def attempts(client: httpx.Client, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/webhooks")
    assert response.status_code == 200, response.text
    return response.json()["deliveries"]


def verify(secret: str, body: bytes, headers: dict[str, str]) -> Any:
    return Webhook(secret).verify(body, headers)


def test_a_delivery_is_the_kafka_event_signed_with_the_tenants_secret_and_recorded(
    client: httpx.Client, receiver: Receiver
):
    where = path()
    job = submit(client, webhook=receiver.url(where), webhook_events=["running", "succeeded"])
    got = wait_until(
        lambda: [r for r in receiver.at(where) if b'"succeeded"' in r.body], 60, message="the succeeded delivery"
    )
    secret = client.get("/v1/webhook-secret").json()["secret"]
    assert secret.startswith("whsec_")
    delivered = got[0]  # type: ignore[index]
    event = verify(secret, delivered.body, delivered.headers)
    assert event["job_id"] == job and event["type"] == "succeeded" and event["tenant"] == "default"
    assert event["data"]["result"]["count"] == 3
    assert delivered.headers["webhook-id"] == webhook_id(job, "succeeded", event["seq"])
    assert abs(int(delivered.headers["webhook-timestamp"]) - time.time()) < 60
    with pytest.raises(WebhookVerificationError):  # another secret does not verify it
        verify("whsec_" + "A" * 43 + "=", delivered.body, delivered.headers)
    # the events as SSE clients and ClickHouse have them: same type and seq (each delivery is its own
    # attempt: running's may arrive after succeeded's)
    wait_until(
        lambda: {orjson.loads(r.body)["type"] for r in receiver.at(where)} == {"running", "succeeded"},
        60,
        message="the running and succeeded deliveries",
    )
    rows = wait_until(
        lambda: (
            len({a["event"] for a in attempts(client, job) if a["outcome"] == "delivered"}) == 2
            and attempts(client, job)
        ),
        60,
        message="both attempts in webhook_deliveries",
    )
    for row in rows:  # type: ignore[union-attr]
        assert row["url"] == receiver.url(where) and row["status_code"] == 200 and row["attempt"] == 1
        assert row["duration_ms"] >= 0 and row["error"] == ""


def test_by_default_only_the_terminal_event_is_posted(client: httpx.Client, receiver: Receiver):
    where = path()
    first = submit(client, webhook=receiver.url(where))
    wait_until(lambda: receiver.at(where), 60, message="a delivery")
    # a second job to the same URL, submitted after: once it is delivered, the first's events are all in
    second = submit(client, webhook=receiver.url(where))
    wait_until(lambda: len(receiver.at(where)) >= 2, 60, message="the second delivery")
    seen = [orjson.loads(r.body) for r in receiver.at(where)]
    assert sorted((e["job_id"], e["type"]) for e in seen) == sorted([(first, "succeeded"), (second, "succeeded")])


def test_500s_are_retried_with_growing_gaps_then_delivered(client: httpx.Client, receiver: Receiver):
    where = path()
    receiver.plan(where, [500, 500, 500])
    job = submit(client, webhook=receiver.url(where))
    rows = wait_until(
        lambda: [a for a in attempts(client, job)] if len(attempts(client, job)) >= 4 else None,
        90,
        message="four recorded attempts",
    )
    rows = sorted(rows, key=lambda a: a["attempt"])  # type: ignore[arg-type]
    assert [a["attempt"] for a in rows] == [1, 2, 3, 4]
    assert [a["outcome"] for a in rows] == ["retrying", "retrying", "retrying", "delivered"]
    assert [a["status_code"] for a in rows] == [500, 500, 500, 200]
    assert rows[0]["error"] == "HTTP 500" and len(rows[0]["response"]) == 256  # only a prefix is kept
    times = [datetime.fromisoformat(a["attempted_at"]).timestamp() for a in rows]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[0] < gaps[1] < gaps[2], gaps  # backoff 0.2 s doubling, jitter within [0.5, 1)
    assert len({r.headers["webhook-id"] for r in receiver.at(where)}) == 1  # one id across retries


def test_410_gone_stops_retries_for_the_job(client: httpx.Client, receiver: Receiver):
    where = path()
    receiver.plan(where, [410])
    job = submit(client, webhook=receiver.url(where), webhook_events=["running", "succeeded"])
    # Whichever event reaches the receiver first gets the 410; the other is delivered if it was already
    # on its way, else never sent. Either way no attempt is retried.
    rows = wait_until(
        lambda: any(a["outcome"] == "gone" for a in attempts(client, job)) and attempts(client, job),
        60,
        message="the 410",
    )
    outcomes = sorted(a["outcome"] for a in rows)  # type: ignore[union-attr]
    assert outcomes in (["gone"], ["delivered", "gone"]), outcomes
    assert all(a["attempt"] == 1 for a in rows)  # type: ignore[union-attr]


def test_redeliver_sends_the_jobs_events_again_with_the_same_ids(client: httpx.Client, receiver: Receiver):
    where = path()
    job = submit(client, webhook=receiver.url(where))
    first = wait_until(lambda: receiver.at(where), 60, message="the first delivery")[0]  # type: ignore[index]
    # the events are read from ClickHouse: until the sink has stored the terminal one there is nothing to send
    wait_until(
        lambda: client.post(f"/v1/jobs/{job}/webhooks:redeliver").json() == {"job_id": job, "redelivered": 1},
        60,
        message="a redelivery of the stored succeeded event",
    )
    again = wait_until(lambda: len(receiver.at(where)) >= 2 and receiver.at(where)[1], 60, message="the redelivery")
    assert again.headers["webhook-id"] == first.headers["webhook-id"]  # type: ignore[union-attr]
    assert orjson.loads(again.body)["type"] == "succeeded"  # type: ignore[union-attr]
    secret = client.get("/v1/webhook-secret").json()["secret"]
    verify(secret, again.body, again.headers)  # type: ignore[union-attr]


def test_redeliver_refuses_jobs_without_a_webhook_and_unknown_jobs(client: httpx.Client):
    job = submit(client)
    response = client.post(f"/v1/jobs/{job}/webhooks:redeliver")
    assert response.status_code == 409 and response.headers["content-type"] == "application/problem+json"
    for method, url in (("POST", "/v1/jobs/nope/webhooks:redeliver"), ("GET", "/v1/jobs/nope/webhooks")):
        response = client.request(method, url)
        assert response.status_code == 404 and response.headers["content-type"] == "application/problem+json"
    unicode = client.get("/v1/jobs/%E2%9C%93%F0%9F%98%80/webhooks")
    assert unicode.status_code == 404


def test_rotation_signs_with_both_secrets_during_the_grace_period(client: httpx.Client, receiver: Receiver):
    old = client.get("/v1/webhook-secret").json()["secret"]
    rotated = client.post("/v1/webhook-secret:rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["secret"]
    assert new != old and new.startswith("whsec_") and rotated.json()["previous_valid_until"] is not None
    assert client.get("/v1/webhook-secret").json()["secret"] == new
    assert rotated.headers["cache-control"] == "no-store"
    where = path()
    submit(client, webhook=receiver.url(where))
    got = wait_until(lambda: receiver.at(where), 60, message="a delivery after the rotation")[0]  # type: ignore[index]
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    verify(new, got.body, got.headers)
    verify(old, got.body, got.headers)


def test_a_name_resolving_to_loopback_is_refused_at_the_attempt(receiver: Receiver):
    """`vm` is in /etc/hosts as 127.0.0.1: it passes the submit check (a name) but not the one after DNS."""
    where = path()
    config = SenderConfig(2.0, 2, 10, 5, 30.0, 256, STRICT)
    now = time.time()
    delivery = Delivery("msg_x", "job", "t", "succeeded", 1, f"https://vm:{receiver.port}{where}", b"{}", 1, now, now)

    async def attempt() -> Verdict:
        sender = Sender(config)
        try:
            return (await sender.attempt(delivery, ["whsec_" + "A" * 43 + "="])).verdict
        finally:
            await sender.close()

    assert asyncio.run(attempt()) is Verdict.REFUSED
    assert receiver.at(where) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "ftp://example.com/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.1/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.100.100.200/",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[fd00:ec2::254]/",
        "https://localhost/hook",
        "https://api.localhost/hook",
        "https://user:pw@example.com/hook",
        "https://example.com:0/hook",
        "https://example.com:99999/hook",
        "https:///hook",
        "https://exämple.com/hook",
        "https://example.com/a b",
        "https://example.com/" + "a" * 2048,
    ],
)
def test_unsafe_urls_are_refused_when_private_is_not_allowed(url: str):
    with pytest.raises(WebhookRefused):
        check_url(url, STRICT)
    with pytest.raises(InvalidSubmission) as caught:
        prepare(JobSubmission(kind="stats.describe", params={"values": [1]}, webhook=url), "t", webhooks=STRICT)
    assert caught.value.errors[0]["field"] == "webhook"


def test_public_https_urls_pass_and_addresses_are_classified():
    assert check_url("https://hooks.example.com/x?y=1", STRICT) == ("hooks.example.com", 443)
    assert check_url("https://93.184.216.34:8443/x", STRICT) == ("93.184.216.34", 8443)
    assert not blocked_address("93.184.216.34") and blocked_address("127.0.0.1") and blocked_address("::1")
    assert blocked_address("0.0.0.0") and blocked_address("224.0.0.1") and blocked_address("not an ip")
    job = prepare(
        JobSubmission(kind="stats.describe", params={"values": [1]}, webhook="https://hooks.example.com/x"),
        "t",
        webhooks=STRICT,
    )
    assert job.data["webhook_events"] == ["succeeded", "failed", "cancelled"]


def test_a_fingerprint_without_webhook_fields_is_what_it_was():
    """Idempotency-Keys stored before webhooks existed still match the same body."""
    body = JobSubmission(kind="stats.describe", params={"values": [1]})
    before = {"kind": "stats.describe", "params": {"values": [1]}, "priority": 0, "timeout_s": None}
    assert body.fingerprint() == "v2:" + hashlib.sha256(orjson.dumps(before, option=orjson.OPT_SORT_KEYS)).hexdigest()
    hooked = JobSubmission(kind="stats.describe", params={"values": [1]}, webhook="https://example.com/")
    assert hooked.fingerprint() != body.fingerprint()


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"webhook": 5}, "webhook"),
        ({"webhook": ["https://x.example"]}, "webhook"),
        ({"webhook": "ftp://example.com/"}, "webhook"),
        ({"webhook": "https://example.com/" + "a" * 3000}, "webhook"),
        ({"webhook": "https://ex\u00e4mple.com/\U0001f600"}, "webhook"),
        ({"webhook": "not a url"}, "webhook"),
        ({"webhook": ""}, "webhook"),
        ({"webhook_events": ["succeeded"]}, "webhook_events"),
        ({"webhook": "https://example.com/", "webhook_events": []}, "webhook_events"),
        ({"webhook": "https://example.com/", "webhook_events": ["queued"]}, "webhook_events.0"),
        ({"webhook": "https://example.com/", "webhook_events": ["x" * 10_000]}, "webhook_events.0"),
        ({"webhook": "https://example.com/", "webhook_events": "succeeded"}, "webhook_events"),
        ({"webhook": "https://example.com/", "webhook_events": [1]}, "webhook_events.0"),
    ],
)
def test_bad_webhook_fields_are_422_naming_the_field(client: httpx.Client, fields: dict[str, Any], field: str):
    body = {"kind": "stats.describe", "params": {"values": [1]}, **fields}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in {e["field"] for e in response.json()["errors"]}, response.json()
    batch = client.post("/v1/jobs:batch", json={"jobs": [body]})
    assert batch.status_code == 422
    errors = batch.json()["jobs"][0]["error"]["errors"]
    assert f"jobs.0.{field}" in {e["field"] for e in errors}, errors


def test_a_batch_item_carries_its_own_webhook(client: httpx.Client, receiver: Receiver):
    where = path()
    items = [
        {"kind": "stats.describe", "params": {"values": [1]}, "webhook": receiver.url(where)},
        {"kind": "stats.describe", "params": {"values": [2]}},
    ]
    response = client.post("/v1/jobs:batch", json={"jobs": items})
    assert response.status_code == 202, response.text
    hooked = response.json()["jobs"][0]["job_id"]
    wait_until(lambda: receiver.at(where), 60, message="the batch item's delivery")
    assert {orjson.loads(r.body)["job_id"] for r in receiver.at(where)} == {hooked}


def test_a_slow_receiver_does_not_hold_up_another_ones_deliveries(client: httpx.Client, receiver: Receiver):
    slow, fast = path(), path()
    receiver.hold(slow, 5.0)
    slow_job = submit(client, webhook=receiver.url(slow))
    wait_until(lambda: receiver.at(slow), 60, message="the slow receiver to be called")
    submit(client, webhook=receiver.url(fast))
    fast_at = wait_until(lambda: receiver.at(fast), 60, message="the fast receiver's delivery")[0].at  # type: ignore[index]
    assert fast_at < receiver.at(slow)[0].at + 5.0  # delivered while the slow receiver still held its request
    assert attempts(client, slow_job) == []  # and that one had not finished


def _event(job_id: str, tenant: str, type_: EventType, seq: int, data: dict[str, Any]) -> JobEvent:
    return JobEvent(job_id=job_id, tenant=tenant, seq=seq, type=type_, kind="stats.describe", data=data)


def test_nothing_is_lost_or_sent_for_the_wrong_tenant_across_a_kill_9_of_the_notifier(
    settings: Settings, receiver: Receiver, tmp_path: Path
):
    """A notifier process of its own, on its own topics; jobs' events put on jobs.events directly
    (queued with the webhook, then the terminal event); the receiver answers slowly, so deliveries
    are in flight when the notifier is killed; a restarted one delivers every job, each signed
    with its own tenant's secret."""
    prefix = f"{settings.topic_prefix}wh{uuid.uuid4().hex[:6]}."
    scoped = settings.model_copy(update={"topic_prefix": prefix})
    kafka = KafkaConnection.from_settings(scoped)
    ensure_topics(kafka, scoped)
    key = uuid.uuid4().hex
    env = service_env(
        settings.kafka_bootstrap or "",
        prefix,
        tmp_path,
        webhook_secret_key=key,
        webhook_allow_private="true",
        webhook_backoff_s="0.2",
        webhook_backoff_max_s="1",
        webhook_session_timeout_s="6",
    )
    notifier = ServiceProcess(["serve", "--role", "notifier", "--log-level", "warning"], env, tmp_path / "n.log")
    notifier.start()
    secrets = WebhookSecrets(kafka, scoped, key.encode(), _grace())
    base = f"/kill/{uuid.uuid4().hex}"
    jobs = {f"{tenant}-{i}-{uuid.uuid4().hex[:8]}": tenant for tenant in ("acme", "globex") for i in range(30)}
    for job_id, tenant in jobs.items():
        receiver.hold(f"{base}/{tenant}/{job_id}", 0.3)
        receiver.plan(f"{base}/{tenant}/{job_id}", [503] if job_id.endswith(("0", "5", "a")) else [])
    try:
        events = []
        for job_id, tenant in jobs.items():
            hook = {"webhook": receiver.url(f"{base}/{tenant}/{job_id}"), "webhook_events": ["succeeded"]}
            events.append(_event(job_id, tenant, EventType.QUEUED, 0, hook))
            events.append(_event(job_id, tenant, EventType.SUCCEEDED, 2**31 - 1, {"result": {"n": 1}}))
        produce(kafka, scoped, events)
        # a third of the jobs posted: the notifier has read every event and committed what it could by now
        wait_until(lambda: len([r for r in receiver.requests if r.path.startswith(base)]) >= 20, 60, message="some")
        notifier.kill9()
        notifier.start()

        def delivered() -> set[str]:
            return {r.path.rsplit("/", 1)[1] for r in receiver.requests if r.path.startswith(base)}

        wait_until(lambda: delivered() >= set(jobs) and _all_succeeded(receiver, base, jobs), 120, 0.2, "all jobs")
    finally:
        notifier.stop()
    for r in (r for r in receiver.requests if r.path.startswith(base)):
        tenant, job_id = r.path.split("/")[-2:]
        event = verify(secrets.secret(tenant, 0), r.body, r.headers)
        assert event["tenant"] == tenant == jobs[job_id] and event["job_id"] == job_id
        other = "globex" if tenant == "acme" else "acme"
        with pytest.raises(WebhookVerificationError):
            verify(secrets.secret(other, 0), r.body, r.headers)


def test_a_workers_events_that_land_before_the_queued_event_are_still_delivered(
    settings: Settings, receiver: Receiver, tmp_path: Path
):
    """The API's queued event and the worker's request are produced together but land on their own:
    a worker's running and succeeded may be on jobs.events before the queued event that carries the
    webhook. They carry it themselves (a Kafka header), so the notifier posts them anyway; an event
    without the header of a job it does not know is still skipped."""
    prefix = f"{settings.topic_prefix}wo{uuid.uuid4().hex[:6]}."
    scoped = settings.model_copy(update={"topic_prefix": prefix})
    kafka = KafkaConnection.from_settings(scoped)
    ensure_topics(kafka, scoped)
    env = service_env(settings.kafka_bootstrap or "", prefix, tmp_path, webhook_allow_private="true")
    notifier = ServiceProcess(["serve", "--role", "notifier", "--log-level", "warning"], env, tmp_path / "n.log")
    base = f"/early/{uuid.uuid4().hex}"
    hooked = [f"hooked-{i}-{uuid.uuid4().hex[:8]}" for i in range(5)]
    bare = f"bare-{uuid.uuid4().hex[:8]}"
    hooks = {
        job_id: {"webhook": receiver.url(f"{base}/{job_id}"), "webhook_events": ["running", "succeeded"]}
        for job_id in [*hooked, bare]
    }
    early = [
        e
        for job_id in [*hooked, bare]
        for e in (
            _event(job_id, "acme", EventType.RUNNING, 1, {"attempt": 1}),
            _event(job_id, "acme", EventType.SUCCEEDED, 2**31 - 1, {"result": {"n": 1}}),
        )
    ]

    def worker_headers(event: JobEvent) -> list[tuple[str, bytes]] | None:
        hook = hooks[event.job_id]
        return None if event.job_id == bare else [webhook_header(hook["webhook"], hook["webhook_events"])]

    notifier.start()
    try:
        produce(kafka, scoped, early, worker_headers)
        produce(kafka, scoped, [_event(j, "acme", EventType.QUEUED, 0, hooks[j]) for j in [*hooked, bare]])

        def posted() -> dict[str, list[str]]:
            found: dict[str, list[str]] = {}
            for r in receiver.requests:
                if r.path.startswith(base):
                    found.setdefault(r.path.rsplit("/", 1)[1], []).append(orjson.loads(r.body)["type"])
            return found

        wait_until(lambda: all(len(posted().get(j, [])) >= 2 for j in hooked), 60, 0.2, "the early events")
    finally:
        notifier.stop()
    assert {j: sorted(types) for j, types in posted().items()} == {j: ["running", "succeeded"] for j in hooked}


def test_a_workers_events_carry_their_jobs_webhook(client: httpx.Client, receiver: Receiver, settings: Settings):
    url = receiver.url(path())
    hooked = submit(client, webhook=url, webhook_events=["running", "succeeded"])
    plain = submit(client)
    done = {hooked: False, plain: False}

    def finished() -> bool:
        for job_id in done:
            done[job_id] = done[job_id] or client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"
        return all(done.values())

    wait_until(finished, 60, message="both jobs to succeed")
    topic = settings.topic(topics.EVENTS)
    bootstrap = settings.kafka_bootstrap or ""
    headers = event_headers(bootstrap, topic, hooked)
    assert set(headers) >= {"queued", "running", "succeeded"}
    for type_ in ("running", "succeeded"):
        assert webhook_in(headers[type_]) == {"webhook": url, "webhook_events": ["running", "succeeded"]}
    assert all(webhook_in(h) is None for h in event_headers(bootstrap, topic, plain).values())


def _all_succeeded(receiver: Receiver, base: str, jobs: dict[str, str]) -> bool:
    """Each job got at least one request that was answered 200 (not only its planned 503)."""
    counts: dict[str, int] = {}
    for r in receiver.requests:
        if r.path.startswith(base):
            job_id = r.path.rsplit("/", 1)[1]
            counts[job_id] = counts.get(job_id, 0) + 1
    planned = {j for j in jobs if j.endswith(("0", "5", "a"))}
    return all(counts.get(j, 0) >= (2 if j in planned else 1) for j in jobs)


def _grace() -> Any:
    from notifier.tenant_secrets import SecretsConfig

    return SecretsConfig(grace_s=0)


def test_secrets_are_derived_never_stored_and_differ_per_tenant(settings: Settings):
    kafka = KafkaConnection.from_settings(settings)
    secrets = WebhookSecrets(kafka, settings, b"k" * 32, _grace())
    try:
        a, b = secrets.secret("acme"), secrets.secret("globex")
        assert a != b and a == secrets.secret("acme", 0) and a != secrets.secret("acme", 1)
        record, generation = secrets.rotation("acme")
        assert b"whsec_" not in record.value and a.encode() not in record.value
        assert orjson.loads(record.value)["number"] == generation.number == 1
    finally:
        secrets.stop()


def test_a_replay_keeps_the_webhook(client: httpx.Client, receiver: Receiver):
    where = path()
    job = submit(client, webhook=receiver.url(where))
    wait_until(lambda: receiver.at(where), 60, message="the original's delivery")
    response = client.post("/v1/replays", json={"job_ids": [job], "rate": 10})
    assert response.status_code == 202, response.text
    wait_until(
        lambda: any(orjson.loads(r.body)["job_id"] != job for r in receiver.at(where)),
        60,
        message="the replayed job's delivery (a new job id, the same webhook)",
    )


def test_the_readme_receiver_verifies_and_prints_a_delivery(client: httpx.Client, tmp_path: Path):
    """The README's copy-paste receiver, run as written (on a free port), gets a job's succeeded event."""
    import socket
    import subprocess
    import sys

    from tests.support import ROOT

    section = (ROOT / "README.md").read_text().split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert '("127.0.0.1", 9000)' in code
    script = tmp_path / "receiver.py"
    script.write_text(code.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {port})'))
    secret = client.get("/v1/webhook-secret").json()["secret"]
    out = tmp_path / "out.txt"
    with open(out, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-u", str(script)], env={"JOBSTREAM_WEBHOOK_SECRET": secret}, stdout=sink
        )
    try:
        job = submit(client, webhook=f"http://127.0.0.1:{port}/hooks/jobstream")
        wait_until(lambda: f"{job} succeeded" in out.read_text(), 60, message="the README receiver's line")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_up_without_api_keys_allows_local_receivers_unless_told_otherwise():
    from jobstream.cli import _local_webhooks

    assert _local_webhooks(Settings()).webhook_allow_private is True
    assert _local_webhooks(Settings(api_keys="acme=" + "k" * 32)).webhook_allow_private is False
    assert _local_webhooks(Settings(webhook_allow_private=False)).webhook_allow_private is False


def test_webhook_deliveries_agree_with_sse_websocket_and_clickhouse(
    client: httpx.Client, stack: str, store: ClickHouseStore, receiver: Receiver
):
    """The conformance check with the webhook leg: every event a webhook asked for arrives exactly as
    SSE, WebSocket and ClickHouse have it (``queued`` is not a webhook event)."""
    where = path()
    every = ["running", "progress", "retrying", "succeeded", "failed", "cancelled"]
    job = submit(client, webhook=receiver.url(where), webhook_events=every)
    legs = assert_channels_agree(stack, store, "default", job)

    def webhook_leg() -> list[Delivered]:
        by_id: dict[str, bytes] = {}
        for request in receiver.at(where):  # at least once: a repeat carries the same webhook-id
            by_id.setdefault(request.headers["webhook-id"], request.body)
        events = sorted((orjson.loads(body) for body in by_id.values()), key=lambda e: e["seq"])
        if not events or events[-1]["type"] not in ("succeeded", "failed", "cancelled"):
            return []
        return [Delivered(str(e["seq"]), e["type"], normalised(e)) for e in events]

    delivered = wait_until(webhook_leg, 60, message="the webhook's terminal delivery")
    expected = [d for d in legs["sse"] if d.type != "queued"]
    assert [(d.id, d.type, d.event) for d in delivered] == [(d.id, d.type, d.event) for d in expected]  # type: ignore[union-attr]


class _Subscriptions:
    """What the notifier's reader asks of ``notifier.subscriptions.Subscriptions``."""

    def __init__(self) -> None:
        self.jobs: dict[str, Any] = {}

    def get(self, job_id: str) -> Any:
        return self.jobs.get(job_id)

    def add(self, job_id: str, subscription: Any) -> str:
        self.jobs[job_id] = subscription
        return job_id


def test_the_notifier_skips_events_of_jobs_without_a_webhook_and_acts_on_the_others():
    """Most events are skipped from their first bytes (``wire.peek``); a queued event that may
    carry a webhook, and every event of a subscribed job, are decoded as before."""
    from notifier.notifier import _Reader
    from streams.wire import encode_event

    subscriptions, ts = _Subscriptions(), datetime.now().astimezone()
    hook = {"webhook": "https://example.com/h", "webhook_events": ["succeeded"]}

    def event(job_id: str, type_: EventType, data: dict[str, Any]) -> Any:
        return _Reader._from_event(encode_event(job_id, "acme", 1, type_, "k", data, ts), subscriptions)  # type: ignore[arg-type]

    assert event("plain", EventType.QUEUED, {"params": {"values": [1]}}) is None
    assert event("decoy", EventType.QUEUED, {"params": {"webhook": "https://example.com/x"}}) is None  # not data's
    assert subscriptions.jobs == {}
    assert event("hooked", EventType.QUEUED, {"params": {}, **hook}) == ("subscribe", "hooked")
    assert event("plain", EventType.SUCCEEDED, {"result": 1}) is None
    assert event("hooked", EventType.RUNNING, {"attempt": 1}) is None  # not among its webhook_events
    kind, delivery = event("hooked", EventType.SUCCEEDED, {"result": 1})
    assert kind == "deliver" and (delivery.job_id, delivery.event, delivery.url) == (
        "hooked",
        "succeeded",
        "https://example.com/h",
    )
    # a worker's event of a job whose queued event is not read yet carries the webhook in a header
    header = [("traceparent", b"00-x"), webhook_header("https://example.com/e", ["running"])]
    assert (
        _Reader._from_event(  # type: ignore[arg-type]
            encode_event("bare", "acme", 1, EventType.RUNNING, "k", {"attempt": 1}, ts), subscriptions, lambda: None
        )
        is None
    )
    early = encode_event("early", "acme", 1, EventType.RUNNING, "k", {"attempt": 1}, ts)
    kind, delivery = _Reader._from_event(early, subscriptions, lambda: header)  # type: ignore[arg-type,misc]
    assert kind == "deliver" and (delivery.job_id, delivery.tenant, delivery.url) == (
        "early",
        "acme",
        "https://example.com/e",
    )
    assert (
        _Reader._from_event(  # a header that is not a webhook's: skipped, no error
            encode_event("junk", "acme", 1, EventType.RUNNING, "k", {}, ts),
            subscriptions,  # type: ignore[arg-type]
            lambda: [("jobstream-webhook", b"[1")],
        )
        is None
    )
    spaced = (
        b'{"schema_version": 1, "job_id": "spaced", "tenant": "acme", "seq": 0, "ts": "2026-01-01T00:00:00Z", '
        b'"type": "queued", "kind": "k", "data": {"webhook": "https://example.com/s", "webhook_events": ["failed"]}}'
    )
    assert _Reader._from_event(spaced, subscriptions)[0] == "subscribe"  # type: ignore[arg-type,index]  # not canonical: decoded
