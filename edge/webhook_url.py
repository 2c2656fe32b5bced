"""Which webhook URLs jobstream will call: checked when a job is submitted and again at every attempt.

A webhook makes our servers send requests wherever a tenant says, so the usual SSRF targets are
refused: anything but ``https``, and hosts that are (or resolve to) loopback, private, link-local,
shared (CGNAT), multicast, reserved or cloud metadata addresses. The check after DNS resolution
runs at every attempt (``resolve``), so a name that later points inward is refused then.
``JOBSTREAM_WEBHOOK_ALLOW_PRIVATE`` lifts both rules (a developer's receiver on localhost over http).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from streams.errors import JobstreamError
from streams.settings import Settings

# Cloud metadata endpoints that are not caught by "not global" (fd00:ec2::254 is private already).
_METADATA = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("100.100.100.200")})


class WebhookRefused(JobstreamError, ValueError):
    """A webhook URL jobstream will not call; the message says why (it never holds the URL's query)."""


@dataclass(frozen=True)
class WebhookPolicy:
    """The settings a webhook URL is checked against."""

    allow_private: bool  #: JOBSTREAM_WEBHOOK_ALLOW_PRIVATE
    max_url_length: int  #: JOBSTREAM_WEBHOOK_MAX_URL_LENGTH
    max_events: int = 6  #: JOBSTREAM_WEBHOOK_MAX_EVENTS

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(settings.webhook_allow_private, settings.webhook_max_url_length, settings.webhook_max_events)


def blocked_address(address: str) -> bool:
    """True for an address a webhook must not reach: anything not globally routable, or metadata."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast or ip in _METADATA


def check_url(url: str, policy: WebhookPolicy) -> tuple[str, int]:
    """``(host, port)`` of a URL the policy allows, before DNS; raises ``WebhookRefused``."""
    if len(url) > policy.max_url_length:
        raise WebhookRefused(f"longer than {policy.max_url_length} characters")
    if not (url.isascii() and url.isprintable()) or " " in url:  # ASCII, no controls or spaces
        raise WebhookRefused("not an ASCII URL without spaces (encode international names as punycode)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused("not a valid URL (bad port or brackets)") from None
    schemes = ("https", "http") if policy.allow_private else ("https",)
    if parts.scheme not in schemes:
        raise WebhookRefused("only https URLs are allowed")
    host = parts.hostname
    if not host:
        raise WebhookRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("credentials in the URL are not allowed")
    if parts.fragment:
        raise WebhookRefused("a fragment is not allowed")
    if port == 0:
        raise WebhookRefused("port 0 is not allowed")
    if not policy.allow_private:
        if host == "localhost" or host.endswith(".localhost"):
            raise WebhookRefused("loopback hosts are not allowed")
        if _is_ip(host) and blocked_address(host):
            raise WebhookRefused("private, loopback, link-local and metadata addresses are not allowed")
    return host, port or (443 if parts.scheme == "https" else 80)


async def resolve(host: str, port: int, policy: WebhookPolicy) -> list[str]:
    """The host's addresses now; raises ``WebhookRefused`` when any of them is blocked, ``OSError``
    when the name does not resolve (a transient failure: the delivery is retried)."""
    if _is_ip(host):  # nothing to resolve (and no thread hop for it)
        if not policy.allow_private and blocked_address(host):
            raise WebhookRefused("private, loopback, link-local and metadata addresses are not allowed")
        return [host]
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = sorted({str(info[4][0]) for info in infos})
    if not policy.allow_private and any(blocked_address(a) for a in addresses):
        raise WebhookRefused("the host resolves to a private, loopback, link-local or metadata address")
    return addresses


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
