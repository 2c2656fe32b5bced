"""Least privilege on Kafka: the ACLs each jobstream role needs, and the start-up check of them.

Each role (api, worker, gateway, sink, replay) connects as its own principal; ``role_grants`` is
the one list of what each may do. The local secured broker grants exactly these
(``grant``), ``jobstream kafka-acls`` prints them as ``kafka-acls.sh`` commands for an
operator's cluster, and ``check_access`` makes a process fail at start-up, naming the cause,
when its login, the broker's certificate or one of its ACLs is wrong.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from streams import topics
from streams.errors import JobstreamError
from streams.kafka_config import KafkaConnection
from streams.settings import Settings

logger = logging.getLogger(__name__)

SSE_GATEWAY_GROUP = "jobstream-sse-gateway"  #: the gateway's tail (assigns; never joins or commits)
CONTROL_GROUP_PREFIX = "jobstream-control-"  #: a worker's control tail, one per process (never joins)
CLUSTER = "kafka-cluster"


class KafkaAccessError(JobstreamError, RuntimeError):
    """This process cannot use Kafka as its role needs to: bad login, untrusted certificate, missing ACL."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One ACL: ``operation`` on a topic, group or the cluster, by name or by name prefix."""

    resource: str  #: topic, group or cluster
    name: str
    operation: str  #: READ, WRITE, DESCRIBE, IDEMPOTENT_WRITE
    prefixed: bool = False


def role_grants(settings: Settings) -> dict[str, list[Grant]]:
    """What each role needs, with the configured topic prefix. Every role may DESCRIBE every jobstream
    topic (its start-up checks they exist); READ and WRITE are granted only where the role reads or writes."""
    t = settings.topic
    describe_all = [Grant("topic", spec.name, "DESCRIBE") for spec in topics.topic_specs(settings)]

    def reads(*names: str) -> list[Grant]:
        return [Grant("topic", t(n), "READ") for n in names]

    def writes(*names: str) -> list[Grant]:
        return [Grant("topic", t(n), "WRITE") for n in names] + [Grant("cluster", CLUSTER, "IDEMPOTENT_WRITE")]

    def mirrors(*names: str) -> list[Grant]:  # reads from assigned partitions (no group membership)
        return reads(*names) + [Grant("group", topics.reader_group(t(n)), "DESCRIBE") for n in names]

    return {
        "api": describe_all
        + writes(topics.REQUESTED, topics.EVENTS, topics.CONTROL, topics.IDEMPOTENCY)
        + writes(topics.WEBHOOK_SECRETS, topics.WEBHOOK_RETRIES)  # rotations; redeliveries
        + writes(topics.REUSE, topics.REUSES)  # the reuse index; a record per reused answer (analytics)
        + writes(topics.DEAD_LETTERS)  # a record per re-drive (dead_letters/book.py)
        + mirrors(topics.IDEMPOTENCY, topics.DEAD_LETTERS, topics.WEBHOOK_SECRETS, topics.REUSE)
        + mirrors(topics.EVENTS)  # long-polls in an API-only process (ingest_api/finished.py)
        + reads(topics.REQUESTED)  # the oldest waiting job's age (jobstream_processor_oldest_waiting_seconds)
        + [Grant("group", t(topics.PROCESSORS_GROUP), "DESCRIBE")],  # reads its committed offsets: lag, 429s
        "worker": describe_all
        + reads(topics.REQUESTED, topics.CONTROL)
        + writes(topics.EVENTS, topics.DEAD_LETTERS)
        + [
            Grant("group", t(topics.PROCESSORS_GROUP), "READ"),  # joins it and commits
            Grant("group", t(CONTROL_GROUP_PREFIX), "DESCRIBE", prefixed=True),  # one per process, never joined
        ],
        "gateway": describe_all
        + reads(topics.EVENTS)
        + [
            Grant("group", SSE_GATEWAY_GROUP, "DESCRIBE"),  # assigns, never joins
            Grant("group", t(topics.SINK_GROUP), "DESCRIBE"),  # reads the sink's committed offsets
        ],
        "sink": describe_all
        + reads(topics.EVENTS, topics.WEBHOOK_ATTEMPTS, topics.REUSES)
        + [
            Grant("group", t(topics.SINK_GROUP), "READ"),
            Grant("group", t(topics.WEBHOOK_LOG_GROUP), "READ"),
            Grant("group", t(topics.REUSE_SINK_GROUP), "READ"),
        ],
        "notifier": describe_all
        + reads(topics.EVENTS, topics.WEBHOOK_RETRIES)
        + mirrors(topics.WEBHOOK_SUBSCRIPTIONS, topics.WEBHOOK_SECRETS)
        + writes(topics.WEBHOOK_RETRIES, topics.WEBHOOK_ATTEMPTS, topics.WEBHOOK_SUBSCRIPTIONS)
        + [Grant("group", t(topics.NOTIFIER_GROUP), "READ")],
        "replay": describe_all
        + mirrors(topics.REQUESTED, topics.REPLAYS)
        + writes(topics.REQUESTED, topics.EVENTS, topics.REPLAYS),
    }


_RESOURCE = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "cluster": ResourceType.BROKER}


def bindings(principal: str, grants: list[Grant]) -> list[AclBinding]:
    """confluent-kafka ACL bindings allowing ``principal`` (a SASL user name) each grant, from any host."""
    unique = list(dict.fromkeys(grants))
    return [
        AclBinding(
            _RESOURCE[g.resource],
            g.name,
            ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL,
            f"User:{principal}",
            "*",
            AclOperation[g.operation],
            AclPermissionType.ALLOW,
        )
        for g in unique
    ]


def grant(admin: KafkaConnection, principals: dict[str, str], settings: Settings, timeout_s: float = 30.0) -> None:
    """Create every role's ACLs on the cluster, as ``admin`` (a principal allowed to alter ACLs)."""
    client = AdminClient(admin.admin_config())
    wanted = [b for role, grants in role_grants(settings).items() for b in bindings(principals[role], grants)]
    for binding, future in client.create_acls(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            raise KafkaAccessError(f"could not create the ACL {binding}: {exc.args[0].str()}") from None
    logger.info("granted %d ACLs to %d roles", len(wanted), len(principals))


def grant_and_wait(connection: KafkaConnection, settings: Settings, timeout_s: float = 30.0) -> None:
    """``grant`` every role of ``connection`` (which knows each role's login) its ACLs, then wait until
    the broker applies them: a client started at once could otherwise be refused (and its records
    dropped) in the moment before the new ACLs reach the authorizer."""
    logins = dict(connection.role_logins)
    grant(connection.for_role("admin"), {role: login.username for role, login in logins.items()}, settings, timeout_s)
    deadline = time.monotonic() + timeout_s
    for role in role_grants(settings):
        while True:
            try:
                check_access(connection.for_role(role), settings, timeout_s)
                break
            except KafkaAccessError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def acl_commands(principals: dict[str, str], settings: Settings) -> str:
    """The ACLs as ``kafka-acls.sh`` commands an operator can run against their own cluster."""
    lines = []
    for role, grants in role_grants(settings).items():
        lines.append(f"# {role}: User:{principals[role]}")
        for g in dict.fromkeys(grants):
            target = {"topic": f"--topic '{g.name}'", "group": f"--group '{g.name}'", "cluster": "--cluster"}
            pattern = " --resource-pattern-type prefixed" if g.prefixed else ""
            lines.append(
                f"kafka-acls.sh --bootstrap-server $KAFKA_BOOTSTRAP --command-config admin.properties --add "
                f"--allow-principal 'User:{principals[role]}' --operation {g.operation.title().replace('_', '')} "
                f"{target[g.resource]}{pattern}"
            )
    return "\n".join(lines) + "\n"


_FATAL_CODES = {KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED}


def _explain(error: KafkaError, connection: KafkaConnection) -> str:
    who = f"user {connection.principal!r}" if connection.principal else "this client"
    text = error.str()
    if error.code() == KafkaError._SSL or "certificate" in text.lower():
        return f"TLS to {connection.bootstrap} failed (is KAFKA_SSL_CA_LOCATION the CA of the broker?): {text}"
    return f"Kafka at {connection.bootstrap} refused the SASL login of {who} (wrong username/password?): {text}"


def check_access(connection: KafkaConnection, settings: Settings, timeout_s: float | None = None) -> None:
    """Fail fast, naming the cause, when ``connection`` (as its role) cannot do what the role needs:
    the login is refused, the broker's certificate is not trusted, or an ACL is missing.

    Only the ACLs a principal can see are checked: Kafka reports each client's own authorized
    operations on topics and groups (KIP-430), so no admin rights are needed.
    """
    timeout_s = settings.kafka_connect_timeout_s if timeout_s is None else timeout_s
    errors: list[KafkaError] = []
    failed = threading.Event()

    def on_error(error: KafkaError) -> None:
        if error.code() in _FATAL_CODES:
            errors.append(error)
            failed.set()

    # librdkafka's own log lines would repeat the cause at every retry: this check reports it once
    client = AdminClient({**connection.admin_config(), "error_cb": on_error, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    metadata = None
    while metadata is None:
        client.poll(0)  # serves error_cb
        if failed.is_set():
            raise KafkaAccessError(_explain(errors[0], connection))
        if time.monotonic() > deadline:
            raise KafkaAccessError(f"Kafka at {connection.bootstrap} did not answer within {timeout_s:.0f}s")
        try:
            metadata = client.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except KafkaException as exc:
            if exc.args[0].code() in _FATAL_CODES:
                raise KafkaAccessError(_explain(exc.args[0], connection)) from None
    role = connection.role
    grants = role_grants(settings).get(role or "", [])
    if not grants or connection.security.protocol == "PLAINTEXT":
        # PLAINTEXT: no login, so no principal of the role's own to hold ACLs; describing every group
        # would only slow start-up (a busy broker's coordinators may take seconds to answer)
        return
    who = f"role {role} (User:{connection.principal})" if connection.principal else f"role {role}"
    missing_topics = sorted({g.name for g in grants if g.resource == "topic"} - set(metadata.topics))
    if missing_topics:
        raise KafkaAccessError(
            f"{who} cannot see the topics {missing_topics}: they do not exist or it lacks DESCRIBE on them"
        )
    wanted: dict[str, set[str]] = {}
    for g in grants:
        if g.resource in ("topic", "group") and not g.prefixed:
            wanted.setdefault(f"{g.resource}:{g.name}", set()).add(g.operation)
    pending = dict(wanted)
    while pending:
        retry: dict[str, KafkaError] = {}
        for key, operations in _describe(client, list(pending), timeout_s).items():
            kind, name = key.split(":", 1)
            if isinstance(operations, KafkaError):
                if operations.code() in _AUTHORIZATION_CODES:
                    raise KafkaAccessError(f"{who} lacks the ACL DESCRIBE on {kind} {name!r}")
                retry[key] = operations  # e.g. the group coordinator is still loading on a fresh broker
                continue
            del pending[key]
            if operations is None or "ALL" in operations:  # None: the broker runs without an authorizer
                continue
            lacking = sorted(op for op in wanted[key] if op not in operations and not (op == "DESCRIBE" and operations))
            if lacking:
                raise KafkaAccessError(f"{who} lacks the ACL {'/'.join(lacking)} on {kind} {name!r}")
        if retry and time.monotonic() > deadline:
            key, error = next(iter(retry.items()))
            raise KafkaAccessError(f"{who}: could not check its access to {key}: {error.str()}")
        if retry:
            time.sleep(0.2)


_AUTHORIZATION_CODES = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED}


def _describe(client: AdminClient, keys: list[str], timeout_s: float) -> dict[str, set[str] | None | KafkaError]:
    """``topic:<name>`` / ``group:<name>`` → the operations this client is allowed there (None: no
    authorizer), or the error describing it gave."""
    topic_names = [k.split(":", 1)[1] for k in keys if k.startswith("topic:")]
    group_names = [k.split(":", 1)[1] for k in keys if k.startswith("group:")]
    futures: dict[str, Any] = {}
    if topic_names:
        futures |= {
            f"topic:{name}": future
            for name, future in client.describe_topics(
                TopicCollection(topic_names), request_timeout=timeout_s, include_authorized_operations=True
            ).items()
        }
    if group_names:
        futures |= {
            f"group:{name}": future
            for name, future in client.describe_consumer_groups(
                group_names, request_timeout=timeout_s, include_authorized_operations=True
            ).items()
        }
    found: dict[str, set[str] | None | KafkaError] = {}
    for key, future in futures.items():
        try:
            operations = future.result(timeout=timeout_s).authorized_operations
        except KafkaException as exc:
            found[key] = exc.args[0]
            continue
        found[key] = None if operations is None else {op.name for op in operations}
    return found
