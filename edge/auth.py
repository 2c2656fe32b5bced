"""API keys and tenants: ``Authorization: Bearer <key>`` → the caller's tenant.

Keys come from ``JOBSTREAM_API_KEYS`` and/or ``JOBSTREAM_API_KEYS_FILE`` (``tenant=key``), are
compared in constant time and never logged. With no keys every caller is tenant ``default``
(``jobstream up`` then binds loopback only). Another tenant's job answers 404, like a job that
does not exist, so a caller cannot learn which ids exist.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from starlette.requests import HTTPConnection

from edge.problems import Problem
from streams.errors import JobstreamError

DEFAULT_TENANT = "default"


class KeyConfigError(JobstreamError, ValueError):
    """The API key configuration cannot be parsed (the message never contains a key)."""


@dataclass(frozen=True)
class KeyRing:
    entries: tuple[tuple[str, bytes], ...] = ()  # (tenant, key)

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @classmethod
    def parse(cls, pairs: str | None = None, file: Path | None = None) -> KeyRing:
        items: list[str] = []
        if pairs:
            items += pairs.split(",")
        if file is not None:
            items += [line for line in Path(file).read_text().splitlines() if not line.strip().startswith("#")]
        entries = []
        for number, item in enumerate((i.strip() for i in items), start=1):
            if not item:
                continue
            tenant, sep, key = item.partition("=")
            tenant, key = tenant.strip(), key.strip()
            if not sep or not tenant or not key:
                raise KeyConfigError(f"API key entry {number} is not 'tenant=key'")
            if len(key) < 16:
                raise KeyConfigError(f"API key of tenant {tenant!r} is shorter than 16 characters")
            entries.append((tenant, key.encode()))
        keys = [k for _, k in entries]
        if len(set(keys)) != len(keys):
            raise KeyConfigError("the same API key is given to two tenants")
        return cls(tuple(entries))

    def tenant_for(self, presented: str) -> str | None:
        """The tenant owning ``presented``, comparing against every key in constant time."""
        candidate = presented.encode()
        found = None
        for tenant, key in self.entries:
            if hmac.compare_digest(candidate, key):
                found = tenant
        return found


def bearer(request: HTTPConnection) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def tenant_of(request: HTTPConnection) -> str:
    """The authenticated caller's tenant, or 401 (also for a WebSocket, before its upgrade)."""
    keyring: KeyRing = request.app.state.keyring
    if not keyring.enabled:
        return DEFAULT_TENANT
    presented = bearer(request)
    tenant = keyring.tenant_for(presented) if presented else None
    if tenant is None:
        raise Problem(
            401,
            "Unauthorized",
            "send 'Authorization: Bearer <api key>'",
            headers={"WWW-Authenticate": 'Bearer realm="jobstream"'},
        )
    return tenant


async def current_tenant(request: Request) -> str:
    """FastAPI dependency: ``tenant_of`` as an async function, because FastAPI runs a sync dependency
    in its thread pool, and those hops were three quarters of a submit's in-process CPU (docs/benchmarks.md)."""
    return tenant_of(request)
