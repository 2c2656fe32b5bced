"""One delivery attempt: the address check, the per-endpoint limit, the host's circuit, the signed POST.

A receiver can only hurt its own deliveries: each endpoint (scheme, host, port) gets at most
``concurrency`` requests at once and ``endpoint_queue`` waiting ones, every request is bounded
by ``timeout_s``, and a host that keeps failing gets its circuit opened for ``breaker_open_s``.
A delivery that cannot be tried now (circuit open, endpoint full) is *deferred*: the notifier
hands it to the retry topic without counting an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

import httpx
from standardwebhooks import Webhook

from edge.webhook_url import WebhookPolicy, WebhookRefused, check_url, resolve
from notifier.records import Delivery
from streams.settings import Settings

logger = logging.getLogger(__name__)


class Verdict(str, Enum):
    """What an attempt means for its delivery."""

    DELIVERED = "delivered"  #: 2xx: done
    RETRY = "retrying"  #: no answer, or not 2xx: try again later
    GONE = "gone"  #: 410: the receiver wants no more of this job
    REFUSED = "refused"  #: the URL is not allowed (now): never retried
    DEFERRED = "deferred"  #: not tried (circuit open or endpoint full): no attempt counted


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    status_code: int = 0
    duration_ms: float = 0.0
    error: str = ""
    response: str = ""
    retry_at: float | None = None  #: for DEFERRED: when it may be tried again


@dataclass(frozen=True)
class SenderConfig:
    timeout_s: float  #: JOBSTREAM_WEBHOOK_TIMEOUT_S
    concurrency: int  #: JOBSTREAM_WEBHOOK_CONCURRENCY_PER_ENDPOINT
    endpoint_queue: int  #: JOBSTREAM_WEBHOOK_ENDPOINT_QUEUE
    breaker_failures: int  #: JOBSTREAM_WEBHOOK_BREAKER_FAILURES
    breaker_open_s: float  #: JOBSTREAM_WEBHOOK_BREAKER_OPEN_S
    response_prefix: int  #: JOBSTREAM_WEBHOOK_RESPONSE_PREFIX_BYTES
    policy: WebhookPolicy

    @classmethod
    def from_settings(cls, settings: Settings) -> SenderConfig:
        return cls(
            settings.webhook_timeout_s,
            settings.webhook_concurrency_per_endpoint,
            settings.webhook_endpoint_queue,
            settings.webhook_breaker_failures,
            settings.webhook_breaker_open_s,
            settings.webhook_response_prefix_bytes,
            WebhookPolicy.from_settings(settings),
        )


class _Endpoint:
    def __init__(self, concurrency: int) -> None:
        self.slots = asyncio.Semaphore(concurrency)
        self.waiting = 0


class _Circuit:
    def __init__(self) -> None:
        self.failures = 0
        self.open_until = 0.0


def sign(delivery: Delivery, secrets: list[str], at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1,`` signature per secret (the previous one too, during its grace)."""
    body = delivery.body.decode()
    signatures = " ".join(Webhook(secret).sign(delivery.webhook_id, at, body) for secret in secrets)
    return {
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signatures,
        "content-type": "application/json",
        "user-agent": "jobstream-webhooks/1",
    }


class Sender:
    """Attempts deliveries over one pooled httpx client (redirects never followed)."""

    def __init__(self, config: SenderConfig) -> None:
        self._config = config
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            timeout=httpx.Timeout(config.timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=200),
            trust_env=False,  # a proxy from the environment would take the address check out of our hands
        )
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}
        self._circuits: dict[str, _Circuit] = {}

    async def close(self) -> None:
        await self._client.aclose()

    async def attempt(self, delivery: Delivery, secrets: list[str]) -> Result:
        config = self._config
        try:
            host, port = check_url(delivery.url, config.policy)
        except WebhookRefused as exc:
            return Result(Verdict.REFUSED, error=str(exc))
        now = time.time()
        circuit = self._circuits.setdefault(host, _Circuit())
        if circuit.open_until > now:
            return Result(Verdict.DEFERRED, error="circuit open", retry_at=circuit.open_until)
        endpoint = self._endpoints.setdefault((host, port), _Endpoint(config.concurrency))
        if endpoint.slots.locked() and endpoint.waiting >= config.endpoint_queue:
            return Result(Verdict.DEFERRED, error="endpoint busy", retry_at=now + config.timeout_s)
        endpoint.waiting += 1
        try:
            await endpoint.slots.acquire()
        finally:
            endpoint.waiting -= 1
        try:
            result = await self._post(delivery, secrets, host, port)
        finally:
            endpoint.slots.release()
        self._count(circuit, result)
        return result

    async def _post(self, delivery: Delivery, secrets: list[str], host: str, port: int) -> Result:
        config = self._config
        started = time.monotonic()
        try:
            await asyncio.wait_for(resolve(host, port, config.policy), config.timeout_s)
        except WebhookRefused as exc:
            return Result(Verdict.REFUSED, error=str(exc))
        except (OSError, TimeoutError) as exc:
            return Result(Verdict.RETRY, duration_ms=_ms(started), error=f"DNS: {type(exc).__name__}")
        headers = sign(delivery, secrets, datetime.now(UTC))
        try:
            async with self._client.stream("POST", delivery.url, content=delivery.body, headers=headers) as response:
                prefix = await _prefix(response, config.response_prefix)
        except httpx.TimeoutException:
            return Result(Verdict.RETRY, duration_ms=_ms(started), error="timeout")
        except httpx.HTTPError as exc:
            return Result(Verdict.RETRY, duration_ms=_ms(started), error=type(exc).__name__)
        code = response.status_code
        if 200 <= code < 300:
            verdict = Verdict.DELIVERED
        elif code == 410:
            verdict = Verdict.GONE
        else:
            verdict = Verdict.RETRY
        return Result(verdict, code, _ms(started), "" if verdict is not Verdict.RETRY else f"HTTP {code}", prefix)

    def _count(self, circuit: _Circuit, result: Result) -> None:
        """Transport failures and 5xx count against the host; anything the receiver answered otherwise resets it."""
        failed = result.verdict is Verdict.RETRY and (result.status_code == 0 or result.status_code >= 500)
        if not failed:
            circuit.failures = 0
            return
        circuit.failures += 1
        if circuit.failures >= self._config.breaker_failures:
            circuit.open_until = time.time() + self._config.breaker_open_s
            circuit.failures = 0


async def _prefix(response: httpx.Response, limit: int) -> str:
    """At most ``limit`` bytes of the body: the rest is never read into memory."""
    kept = b""
    if limit:
        async for chunk in response.aiter_bytes():
            kept += chunk
            if len(kept) >= limit:
                break
    return kept[:limit].decode("utf-8", "replace")


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000
