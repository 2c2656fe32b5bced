"""Topic names and their settings, and the one place topics get created.

Topics are created explicitly (the local broker runs with auto-create off) so
partition counts are a decision, not an accident.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from streams.kafka_config import KafkaConnection
from streams.partitioning import RequestPartitioner
from streams.settings import Settings

logger = logging.getLogger(__name__)

REQUESTED = "jobs.requested"  #: JobRequested commands, keyed by job_id, partitioned by tenant (streams.partitioning)
EVENTS = "jobs.events"  #: JobEvent history of every job, keyed by job_id
DEAD_LETTERS = "jobs.dead-letters"  #: requests a processor could not handle, with the reason
PROCESSORS_GROUP = "jobstream-processors"  #: the processors' consumer group (= Faust app id)
SINK_GROUP = "jobstream-sink"  #: the ClickHouse sink's consumer group (the gateway reads its offsets)
IDEMPOTENCY = "jobs.idempotency"  #: Idempotency-Key → job, compacted, kept idempotency_ttl_s
CONTROL = "jobs.control"  #: commands to running workers (cancel), keyed by job_id; every worker reads all
REPLAYS = "jobs.replays"  #: replay plans and positions (and stop requests), keyed by replay id, compacted
WEBHOOK_RETRIES = "webhooks.retry"  #: webhook deliveries waiting for their next attempt, keyed by job_id
WEBHOOK_ATTEMPTS = "webhooks.attempts"  #: one record per delivery attempt (the sink stores them), keyed by job_id
WEBHOOK_SUBSCRIPTIONS = "webhooks.subscriptions"  #: job_id → its webhook URL and events, compacted
WEBHOOK_SECRETS = "webhooks.secrets"  #: tenant → secret generation (never a secret), compacted
NOTIFIER_GROUP = "jobstream-notifier"  #: the notifier's consumer group (jobs.events and webhooks.retry)
WEBHOOK_LOG_GROUP = "jobstream-sink-webhooks"  #: the sink's consumer group of webhooks.attempts
REUSE = "jobs.reuse"  #: reusable jobs: (tenant, kind, version, canonical params) → job, compacted
REUSES = "jobs.reuses"  #: one record per request answered by an earlier job (hit or join), for analytics
REUSE_SINK_GROUP = "jobstream-sink-reuses"  #: the sink's consumer group of jobs.reuses


def reader_group(topic: str) -> str:
    """The group id of a consumer that only assigns ``topic``'s partitions (never joins or commits). The
    client still needs one, and asks for its coordinator: on a secured cluster that takes DESCRIBE on
    this group, so it is named after the topic (``streams.acls``)."""
    return f"{topic}.reader"


@dataclass(frozen=True)
class JobTopics:
    """Where a new job's two records go: its request, and its ``queued`` event."""

    requested: str
    events: str
    partitioner: RequestPartitioner  #: where on ``requested`` a job's request goes

    @classmethod
    def from_settings(cls, settings: Settings, partitions: int | None = None) -> JobTopics:
        """``partitions``: jobs.requested's real partition count when known (``requested_partition_count``);
        else ``JOBSTREAM_REQUESTED_PARTITIONS``."""
        partitioner = RequestPartitioner.of(
            partitions or settings.requested_partitions, settings.tenant_partitions, settings.priority_partitions
        )
        return cls(settings.topic(REQUESTED), settings.topic(EVENTS), partitioner)


def requested_partition_count(kafka: KafkaConnection, settings: Settings, timeout_s: float = 30.0) -> int | None:
    """How many partitions jobs.requested has (None: not found): a producer must not pick one it lacks."""
    topic = settings.topic(REQUESTED)
    found = AdminClient(kafka.admin_config()).list_topics(topic, timeout=timeout_s).topics.get(topic)
    return len(found.partitions) if found is not None and found.partitions else None


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic jobstream owns, with partitions and configs from settings."""
    common = {"max.message.bytes": str(settings.max_message_bytes)}
    return [
        TopicSpec(settings.topic(REQUESTED), settings.requested_partitions, common),
        TopicSpec(settings.topic(EVENTS), settings.events_partitions, common),
        TopicSpec(settings.topic(DEAD_LETTERS), 1, common),
        TopicSpec(
            settings.topic(IDEMPOTENCY),
            3,
            {
                "cleanup.policy": "compact,delete",
                "retention.ms": str(int(settings.idempotency_ttl_s * 1000)),
            },
        ),
        TopicSpec(settings.topic(CONTROL), 3, {"retention.ms": str(int(settings.control_retention_s * 1000))}),
        TopicSpec(settings.topic(REPLAYS), 1, {"cleanup.policy": "compact"}),
        TopicSpec(
            settings.topic(REUSE),
            3,
            {"cleanup.policy": "compact,delete", "retention.ms": str(max(settings.reuse_max_age_s, 60) * 1000)},
        ),
        TopicSpec(settings.topic(REUSES), 3, common),
        *_webhook_specs(settings, common),
    ]


def _webhook_specs(settings: Settings, common: dict[str, str]) -> list[TopicSpec]:
    """The notifier's topics: a retry outlives the horizon by a day; a subscription its job by as much."""
    keep_ms = str(int((settings.webhook_retry_horizon_s + 86_400) * 1000))
    return [
        TopicSpec(settings.topic(WEBHOOK_RETRIES), settings.events_partitions, {**common, "retention.ms": keep_ms}),
        TopicSpec(settings.topic(WEBHOOK_ATTEMPTS), 3, {"retention.ms": str(7 * 86_400_000)}),
        TopicSpec(
            settings.topic(WEBHOOK_SUBSCRIPTIONS),
            3,
            {"cleanup.policy": "compact,delete", "retention.ms": str(int(keep_ms) + 2 * 86_400_000)},
        ),
        TopicSpec(settings.topic(WEBHOOK_SECRETS), 1, {"cleanup.policy": "compact"}),
    ]


def ensure_topics(kafka: KafkaConnection, settings: Settings, timeout_s: float = 30.0) -> None:
    """Create missing topics; existing ones are left as they are."""
    admin = AdminClient(kafka.admin_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [s for s in topic_specs(settings) if s.name not in existing]
    if not wanted:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                s.name, num_partitions=s.partitions, replication_factor=settings.replication_factor, config=s.config
            )
            for s in wanted
        ],
        request_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            logger.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args and exc.args[0].name() == "TOPIC_ALREADY_EXISTS":
                continue
            raise
