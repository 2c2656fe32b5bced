"""Every replay's latest record, mirrored from the compacted ``jobs.replays`` topic.

Two kinds of record share the topic: ``<replay id>`` holds the replay (plan and
position), ``<replay id>:stop`` is a stop request (a tombstone clears it on resume).
They have separate keys so a running replay's checkpoints never overwrite a stop.
"""

from __future__ import annotations

import threading

import orjson

from replay.models import Replay
from streams.kafka_config import KafkaConnection
from streams.mirror import TopicMirror
from streams.producer import Outgoing

_STOP = b":stop"


class ReplayBook(TopicMirror):
    def __init__(self, kafka: KafkaConnection, topic: str) -> None:
        super().__init__(kafka, topic)
        self._lock = threading.Lock()
        self._replays: dict[str, Replay] = {}
        self._stops: set[str] = set()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        if key.endswith(_STOP):
            replay_id = key[: -len(_STOP)].decode()
            with self._lock:
                (self._stops.add if value is not None else self._stops.discard)(replay_id)
        elif value is not None:
            self.remember(Replay.model_validate_json(value))

    def remember(self, replay: Replay) -> None:
        """Take ``replay`` as the latest state now (a writer calls this once Kafka acked it)."""
        with self._lock:
            current = self._replays.get(replay.replay_id)
            if current is None or replay.updated_at >= current.updated_at:
                self._replays[replay.replay_id] = replay

    def get(self, replay_id: str) -> Replay | None:
        with self._lock:
            return self._replays.get(replay_id)

    def of_tenant(self, tenant: str) -> list[Replay]:
        """The tenant's replays, newest first."""
        with self._lock:
            replays = [r for r in self._replays.values() if r.tenant == tenant]
        return sorted(replays, key=lambda r: r.created_at, reverse=True)

    def stop_requested(self, replay_id: str) -> bool:
        with self._lock:
            return replay_id in self._stops

    def request_stop(self, replay_id: str) -> None:
        with self._lock:
            self._stops.add(replay_id)

    def clear_stop(self, replay_id: str) -> None:
        with self._lock:
            self._stops.discard(replay_id)


def replay_record(topic: str, replay: Replay) -> Outgoing:
    return Outgoing(topic, replay.replay_id.encode(), orjson.dumps(replay.model_dump(mode="json")))


def stop_record(topic: str, replay_id: str, stop: bool = True) -> Outgoing:
    """A stop request (``stop=False``: the tombstone that clears it)."""
    value = orjson.dumps({"stop": True}) if stop else None
    return Outgoing(topic, replay_id.encode() + _STOP, value)  # type: ignore[arg-type]  # None is a tombstone: Kafka's way to delete a key
