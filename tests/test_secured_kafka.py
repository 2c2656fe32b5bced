"""The whole pipeline on a secured broker: SASL_SSL (SCRAM-SHA-512), a CA made at start, one principal
per role holding only the ACLs ``streams.acls`` grants it; and what happens when one of those is wrong.

The module starts its own secured local broker once (the session's broker stays plaintext).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, AdminClient, ResourcePatternType
from confluent_kafka.admin import ResourceType as KafkaResource
from httpx_sse import connect_sse
from pydantic import SecretStr

from store.clickhouse import ClickHouseStore
from streams import topics
from streams.acls import KafkaAccessError, check_access, grant
from streams.broker import local_connection
from streams.certs import LocalCA
from streams.kafka_config import KafkaConnection, SaslLogin
from streams.local_kafka import LocalKafka
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.support import ROOT
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import PLUGIN, Worker

pytestmark = pytest.mark.kafka


@dataclass
class Secured:
    broker: LocalKafka
    settings: Settings
    kafka: KafkaConnection  # no login of its own: every client picks its role
    url: str
    client: httpx.Client


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, store: ClickHouseStore, clickhouse_url: str) -> Iterator[Secured]:
    from jobstream.server import create_app

    home = tmp_path_factory.mktemp("secured")
    broker = LocalKafka(home / "kafka", heap="512m", security="sasl_ssl")
    broker.start(timeout_s=240)  # on a loaded CI machine the JVM with TLS can take minutes to start
    try:
        settings = Settings(
            kafka_bootstrap=broker.bootstrap,
            clickhouse_url=clickhouse_url,
            data_dir=home / "data",
            topic_prefix=f"s{uuid.uuid4().hex[:8]}.",
            requested_partitions=2,
            events_partitions=2,
            batch_max_wait_ms=20,
            sink_batch_max_wait_ms=50,
            calc_processes=1,
            plugins=PLUGIN,
            worker_session_timeout_s=6.0,
        )
        kafka = local_connection(broker, settings)  # creates the topics, grants every role its ACLs on them
        worker = Worker(settings, kafka=kafka).start()
        server = Server(create_app(settings, kafka=kafka, store=store)).start()
        try:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                wait_until(lambda: client.get("/healthz").status_code == 200, 90, message="healthz")
                yield Secured(broker, settings, kafka, server.url, client)
        finally:
            server.stop()
            worker.stop()
    finally:
        broker.stop()


def wait_status(client: httpx.Client, job_id: str, statuses: set[str], timeout_s: float = 90) -> dict:
    return wait_until(
        lambda: (view := client.get(f"/v1/jobs/{job_id}").json()).get("status") in statuses and view,
        timeout_s,
        0.1,
        message=f"{job_id} to be {statuses}",
    )


def test_the_whole_pipeline_runs_with_each_role_holding_only_its_acls(secured: Secured, store: ClickHouseStore):
    client = secured.client
    # submit → the Faust worker (aiokafka over SASL_SSL) → events → SSE
    accepted = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": [1, 2, 3, 4]}})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    with connect_sse(client, "GET", f"/v1/jobs/{job_id}/events", timeout=httpx.Timeout(60, read=60)) as source:
        events = list(source.iter_sse())
    assert [e.event for e in events][0] == "queued" and events[-1].event == "succeeded"
    assert orjson.loads(events[-1].data)["data"]["result"]["mean"] == 2.5

    # a batch
    batch = client.post("/v1/jobs:batch", json={"jobs": [{"kind": "test.square", "params": {"x": x}} for x in (2, 3)]})
    assert batch.status_code == 202, batch.text
    squares = [job["job_id"] for job in batch.json()["jobs"]]
    assert [wait_status(client, j, {"succeeded"})["result"] for j in squares] == [{"y": 4.0}, {"y": 9.0}]

    # a cancel reaches the running job through jobs.control
    slow = client.post("/v1/jobs", json={"kind": "test.work", "params": {"sleep_s": 60, "steps": 600}})
    slow_id = slow.json()["job_id"]
    wait_status(client, slow_id, {"running"})
    assert client.delete(f"/v1/jobs/{slow_id}").status_code == 202
    assert wait_status(client, slow_id, {"cancelled", "succeeded", "failed"})["status"] == "cancelled"

    # the sink put the results into ClickHouse
    def stored() -> bool:
        rows = store.query(
            "SELECT count() FROM job_results FINAL WHERE job_id IN {ids:Array(String)}", {"ids": [job_id, *squares]}
        )
        return rows[0][0] == 3

    wait_until(stored, 60, 0.2, message="results in ClickHouse")

    # a replay re-runs the squares under new ids
    # pinned to version 1: the registry is per process, and other test modules of the session load a v2
    replay = client.post("/v1/replays", json={"job_ids": squares, "calc_versions": {"test.square": "1"}})
    assert replay.status_code == 202, replay.text
    replay_id = replay.json()["replay_id"]
    done = wait_until(
        lambda: (
            (r := client.get(f"/v1/replays/{replay_id}").json())["state"] == "completed"
            and (r.get("outcomes") or {}).get("pending") == 0
            and sum(r["outcomes"].values()) == r["emitted"]
            and r
        ),
        90,
        0.2,
        message="replay to complete",
    )
    assert done["emitted"] == 2 and done["outcomes"]["equal"] == 2, done  # same calculation version: same results


def test_a_role_is_refused_where_it_has_no_acl(secured: Secured):
    settings, kafka = secured.settings, secured.kafka
    # The gateway only reads jobs.events: writing a request is refused by the broker.
    # (Not idempotent: the gateway may not even get a producer id, which would fail before the topic is asked.)
    producer = Producer(kafka.for_role("gateway").producer_config(**{"enable.idempotence": False}))
    outcome: list[KafkaError] = []
    producer.produce(settings.topic(topics.REQUESTED), b"x", on_delivery=lambda err, _msg: outcome.append(err))
    assert producer.flush(30) == 0
    assert outcome and outcome[0] is not None and outcome[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    # The sink may not join the processors' group (it would steal their requests).
    consumer = Consumer(kafka.for_role("sink").consumer_config(settings.topic(topics.PROCESSORS_GROUP)))
    errors: list[KafkaError] = []
    try:
        consumer.subscribe([settings.topic(topics.REQUESTED)])

        def refused() -> bool:
            message = consumer.poll(0.5)
            if message is not None and message.error():
                errors.append(message.error())
            return any(e.code() in _DENIED for e in errors)

        wait_until(refused, 30, 0, message="the broker to refuse the sink")
        assert consumer.assignment() == []
    finally:
        consumer.close()


_DENIED = (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)


@pytest.fixture(scope="module")
def sink_without_read(secured: Secured) -> Settings:
    """Topics of their own where every role has its ACLs except the sink's READ on jobs.events."""
    settings = secured.settings.model_copy(update={"topic_prefix": f"n{uuid.uuid4().hex[:8]}."})
    admin = secured.kafka.for_role("admin")
    ensure_topics(admin, settings)
    logins = dict(secured.kafka.role_logins)
    grant(admin, {role: login.username for role, login in logins.items()}, settings)
    client = AdminClient(admin.admin_config())
    doomed = AclBindingFilter(
        KafkaResource.TOPIC,
        settings.topic(topics.EVENTS),
        ResourcePatternType.LITERAL,
        f"User:{logins['sink'].username}",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    for future in client.delete_acls([doomed], request_timeout=30).values():
        assert len(future.result(timeout=30)) == 1
    return settings


def test_start_up_check_names_the_missing_acl(secured: Secured, sink_without_read: Settings):
    lacking = r"role sink \(User:jobstream-sink\) lacks the ACL READ on topic '.*jobs\.events'"

    def checked() -> str:
        started = time.monotonic()
        try:
            check_access(secured.kafka.for_role("sink"), sink_without_read)
        except KafkaAccessError as exc:
            return str(exc)
        finally:
            assert time.monotonic() - started < 10  # the check answers, it does not hang
        return "passed"

    # The broker applies ACL changes from its metadata log a moment after the admin calls return:
    # until then the sink may not see the new topics at all, or may still hold the READ.
    answers: list[str] = []
    wait_until(lambda: re.search(lacking, answer := checked()) or answers.append(answer), 30, 0.2, "the READ named")
    assert all("cannot see the topics" in a or a == "passed" for a in answers), answers  # nothing else on the way
    check_access(secured.kafka.for_role("gateway"), sink_without_read)  # the others still pass
    with pytest.raises(KafkaAccessError, match="cannot see the topics"):  # a prefix nobody was granted
        check_access(secured.kafka.for_role("api"), secured.settings.model_copy(update={"topic_prefix": "nobody."}))


def cli(args: list[str], env: dict[str, str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def role_env(kafka: KafkaConnection, settings: Settings, role: str, **changes: object) -> dict[str, str]:
    connection = kafka.for_role(role)
    if changes:
        connection = dataclasses.replace(connection, security=dataclasses.replace(connection.security, **changes))
    return {
        **settings.env(),
        **connection.env(),
        "JOBSTREAM_DATA_DIR": str(settings.data_dir / f"cli-{uuid.uuid4().hex[:6]}"),
        "JOBSTREAM_PORT": "0",
    }


def test_a_wrong_password_fails_start_up_within_seconds_naming_the_cause(secured: Secured):
    wrong = SaslLogin("jobstream-worker", SecretStr("not-the-password-" + uuid.uuid4().hex))
    started = time.monotonic()
    result = cli(["worker"], role_env(secured.kafka, secured.settings, "worker", login=wrong))
    assert result.returncode == 3, result.stderr[-2000:]
    assert time.monotonic() - started < 30
    assert "refused the SASL login of user 'jobstream-worker'" in result.stderr
    assert "Traceback" not in result.stderr and wrong.password.get_secret_value() not in result.stderr + result.stdout


def test_an_untrusted_broker_certificate_fails_start_up_naming_tls(secured: Secured, tmp_path: Path):
    other_ca = LocalCA(tmp_path / "other-ca").cert_path  # a CA that never signed the broker's certificate
    result = cli(["serve", "--role", "sink"], role_env(secured.kafka, secured.settings, "sink", ca_location=other_ca))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "TLS to" in result.stderr and "KAFKA_SSL_CA_LOCATION" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_acl_fails_serve_naming_it(secured: Secured, sink_without_read: Settings):
    result = cli(["serve", "--role", "sink"], role_env(secured.kafka, sink_without_read, "sink"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "lacks the ACL READ on topic" in result.stderr and "Traceback" not in result.stderr
