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
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from streams.errors import JobstreamError
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


class SecretFileError(JobstreamError, RuntimeError):
    """The stream token key file is unsafe or unreadable (the message never holds its content)."""


def secret_file(settings: Settings) -> Path:
    """``JOBSTREAM_STREAM_TOKEN_SECRET_FILE``, else ``<data dir>/stream-token.secret``."""
    return settings.stream_token_secret_file or Path(settings.data_dir) / SECRET_FILE


def load_or_create_secret(path: Path) -> bytes:
    """The key kept in ``path``; 32 random bytes written there first (hex, mode 0600) if it is missing.

    Creation is atomic and exclusive: the key goes to a private temp file in the same dir, which is
    then hard-linked into place; the link fails if another process got there first, and its key is
    used. Like ssh with a private key, a file that group or others may read or write, or that
    another user owns, is refused: anyone who can read it can mint tokens for every tenant.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not os.path.lexists(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(secrets.token_hex(32).encode() + b"\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another process created it meanwhile: its key wins
        finally:
            os.unlink(tmp)
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise SecretFileError(f"cannot open the stream token key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"the stream token key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise SecretFileError(
                f"the stream token key file {path} is open to group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); `chmod 600` it or remove it"
            )
        if st.st_uid != os.geteuid():
            raise SecretFileError(f"the stream token key file {path} belongs to another user (uid {st.st_uid})")
        text = f.read(4096)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) < 16:
        raise SecretFileError(
            f"the stream token key file {path} does not hold a hex key of 16+ bytes; remove it "
            "to have a new one made (tokens issued before stop working)"
        )
    return key
