"""Stream tokens: short-lived, signed credentials a browser's EventSource can carry.

``EventSource`` cannot send ``Authorization``, so a caller with an API key gets a token from
``POST /v1/stream-tokens`` and passes ``?token=``. A token (HMAC-SHA256 over tenant, optional
job and expiry) needs no server state: any gateway with the same
``JOBSTREAM_STREAM_TOKEN_SECRET`` (or the data dir's generated one) accepts it. It is checked
when a stream opens; an open stream is not cut at expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams.errors import JobstreamError
from streams.key_files import KeyFileError, load_or_create_key
from streams.settings import Settings

logger = logging.getLogger(__name__)

SECRET_FILE = "stream-token.secret"
_DOMAIN = b"jobstream stream token v1\n"  # keeps these MACs apart from any other use of the secret
MAX_TOKEN_CHARS = 2048


class InvalidToken(JobstreamError, ValueError):
    """The token is malformed, tampered with, signed with another secret, or expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class StreamGrant:
    """What a verified token (or an API key) allows: one tenant's streams, maybe one job's only."""

    tenant: str
    job_id: str | None = None
    expires_at: float | None = None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamTokens:
    """Issues and verifies stream tokens with one HMAC key."""

    def __init__(self, secret: bytes, max_ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError("the stream token secret must be at least 16 bytes")
        self._secret = secret
        self.max_ttl_s = max_ttl_s
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings) -> StreamTokens:
        if settings.stream_token_secret is not None:
            secret = settings.stream_token_secret.get_secret_value().encode()
        else:
            path = secret_file(settings)
            secret = load_or_create_secret(path)
            logger.info("stream tokens are signed with the key kept in %s (JOBSTREAM_STREAM_TOKEN_SECRET unset)", path)
        return cls(secret, settings.stream_token_ttl_s)

    def issue(self, tenant: str, job_id: str | None = None, ttl_s: float | None = None) -> tuple[str, float]:
        """A token for ``tenant`` (and ``job_id``), and its expiry (unix seconds)."""
        ttl = self.max_ttl_s if ttl_s is None else min(ttl_s, self.max_ttl_s)
        expires_at = int(self._clock() + ttl)
        payload = orjson.dumps({"v": 1, "t": tenant, "j": job_id, "e": expires_at})
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", float(expires_at)

    def verify(self, token: str) -> StreamGrant:
        """The grant a token carries; ``InvalidToken`` if it is not one of ours or has expired."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise InvalidToken("malformed")
        body, mac = token.split(".")
        try:
            payload, presented = _unb64(body), _unb64(mac)
        except (binascii.Error, ValueError):
            raise InvalidToken("malformed") from None
        if not hmac.compare_digest(presented, self._mac(payload)):
            raise InvalidToken("bad signature")
        try:
            claims = orjson.loads(payload)
            tenant, job_id, expires_at = claims["t"], claims["j"], float(claims["e"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise InvalidToken("malformed") from None
        if claims.get("v") != 1 or not isinstance(tenant, str) or not (job_id is None or isinstance(job_id, str)):
            raise InvalidToken("malformed")
        if self._clock() >= expires_at:
            raise InvalidToken("expired")
        return StreamGrant(tenant=tenant, job_id=job_id, expires_at=expires_at)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, _DOMAIN + payload, hashlib.sha256).digest()


SecretFileError = KeyFileError  #: the name tests and callers know


def secret_file(settings: Settings) -> Path:
    """``JOBSTREAM_STREAM_TOKEN_SECRET_FILE``, else ``<data dir>/stream-token.secret``."""
    return settings.stream_token_secret_file or Path(settings.data_dir) / SECRET_FILE


def load_or_create_secret(path: Path) -> bytes:
    """The stream-token key kept in ``path`` (made there first if missing; see ``streams.key_files``)."""
    return load_or_create_key(path, "stream token key")[0]
