"""Tenants' webhook secrets: derived from one server key, never stored.

A tenant's secret is ``whsec_`` + HMAC-SHA256(server key, tenant, generation). Kafka holds only
each tenant's *generation* (``webhooks.secrets``, compacted: a rotation bumps it and remembers
when), so reading the topic, its backups or ClickHouse reveals no secret; the server key is
``JOBSTREAM_WEBHOOK_SECRET_KEY`` or a 0600 file in the data dir (made on first start), and the
API and every notifier must share it. Secrets never reach a log or an error message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams import topics
from streams.kafka_config import KafkaConnection
from streams.key_files import load_or_create_key
from streams.mirror import TopicMirror
from streams.producer import Outgoing
from streams.settings import Settings

logger = logging.getLogger(__name__)

KEY_FILE = "webhook-secret.key"
_DOMAIN = b"jobstream webhook secret v1\n"  # keeps these MACs apart from any other use of the key


@dataclass(frozen=True)
class Generation:
    """Which secret signs for a tenant: ``number`` now, and ``previous`` until ``rotated_at`` + grace."""

    number: int = 0
    previous: int | None = None
    rotated_at: float = 0.0


@dataclass(frozen=True)
class SecretsConfig:
    grace_s: float  #: JOBSTREAM_WEBHOOK_SECRET_GRACE_S

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretsConfig:
        return cls(settings.webhook_secret_grace_s)


class WebhookSecrets(TopicMirror):
    """The tenants' secret generations, mirrored from Kafka; derives the secrets themselves."""

    def __init__(self, kafka: KafkaConnection, settings: Settings, key: bytes, config: SecretsConfig) -> None:
        super().__init__(kafka, settings.topic(topics.WEBHOOK_SECRETS))
        if len(key) < 16:
            raise ValueError("the webhook secret key must be at least 16 bytes")
        self._key = key
        self._grace_s = config.grace_s
        self._generations: dict[str, Generation] = {}
        self._derived: dict[tuple[str, int], str] = {}  # per delivery otherwise: two HMACs each
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, kafka: KafkaConnection, settings: Settings) -> WebhookSecrets:
        return cls(kafka, settings, server_key(settings), SecretsConfig.from_settings(settings))

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None or value is None:
            return
        d = orjson.loads(value)
        self._put(key.decode(), Generation(int(d["number"]), d.get("previous"), float(d["rotated_at"])))

    def _put(self, tenant: str, generation: Generation) -> None:
        with self._lock:
            known = self._generations.get(tenant)
            if known is None or generation.number >= known.number:
                self._generations[tenant] = generation

    def generation(self, tenant: str) -> Generation:
        with self._lock:
            return self._generations.get(tenant, Generation())

    def secret(self, tenant: str, number: int | None = None) -> str:
        """The tenant's secret of generation ``number`` (default: the current one)."""
        number = self.generation(tenant).number if number is None else number
        found = self._derived.get((tenant, number))
        if found is None:
            mac = hmac.new(self._key, _DOMAIN + f"{tenant}\x00{number}".encode(), hashlib.sha256).digest()
            found = self._derived[(tenant, number)] = "whsec_" + base64.b64encode(mac).decode()
        return found

    def signing(self, tenant: str, now: float | None = None) -> list[str]:
        """The secrets a delivery is signed with: the current one, and the previous within its grace period."""
        generation = self.generation(tenant)
        found = [self.secret(tenant, generation.number)]
        now = time.time() if now is None else now
        if generation.previous is not None and now < generation.rotated_at + self._grace_s:
            found.append(self.secret(tenant, generation.previous))
        return found

    def rotation(self, tenant: str) -> tuple[Outgoing, Generation]:
        """The record that rotates the tenant's secret, and the generation to remember once it is acked."""
        current = self.generation(tenant)
        nxt = Generation(current.number + 1, current.number, time.time())
        value = orjson.dumps({"number": nxt.number, "previous": nxt.previous, "rotated_at": nxt.rotated_at})
        return Outgoing(self.topic, tenant.encode(), value), nxt

    def remember(self, tenant: str, generation: Generation) -> None:
        self._put(tenant, generation)


def server_key(settings: Settings) -> bytes:
    """``JOBSTREAM_WEBHOOK_SECRET_KEY``, else the key kept in the key file (made on first use)."""
    if settings.webhook_secret_key is not None:
        return settings.webhook_secret_key.get_secret_value().encode()
    path = settings.webhook_secret_key_file or Path(settings.data_dir) / KEY_FILE
    return _load_or_create(path)


def _load_or_create(path: Path) -> bytes:
    key, made = load_or_create_key(path, "webhook key")
    if made:
        logger.info("webhook secrets are derived from the key kept in %s", path)
    return key
