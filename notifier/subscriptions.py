"""Which jobs have a webhook: learnt from their queued events, kept in a compacted topic.

The notifier writes a job's subscription to ``webhooks.subscriptions`` before it commits past
the job's queued event, and reads the topic back at start-up, so a restart that resumes after
the queued event still knows where the job's later events go.
"""

from __future__ import annotations

from notifier.records import Subscription
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.mirror import TopicMirror
from streams.producer import Outgoing
from streams.settings import Settings


class Subscriptions(TopicMirror):
    def __init__(self, kafka: KafkaConnection, settings: Settings) -> None:
        super().__init__(kafka, settings.topic(topics.WEBHOOK_SUBSCRIPTIONS))
        self._jobs: dict[str, Subscription] = {}  # set and read from several threads: single dict ops only

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if value is None:
            self._jobs.pop(key.decode(), None)
        else:
            self._jobs[key.decode()] = Subscription.from_bytes(value)

    def get(self, job_id: str) -> Subscription | None:
        return self._jobs.get(job_id)

    def add(self, job_id: str, subscription: Subscription) -> Outgoing:
        """Remember the job's subscription now; the record to make it durable."""
        self._jobs[job_id] = subscription
        return Outgoing(self.topic, job_id.encode(), subscription.to_bytes())
