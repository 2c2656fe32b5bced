"""HTTP face of webhooks: the tenant's signing secret, a job's delivery attempts, redelivery.

Served by the API role (it has the store and a producer); the notifier itself needs no HTTP.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from edge.auth import current_tenant
from edge.problems import Problem, problem_responses
from notifier.records import Delivery, Subscription, webhook_id
from notifier.tenant_secrets import WebhookSecrets
from store.clickhouse import ClickHouseStore
from store.jobs import job_view
from streams import topics, wire
from streams.producer import Outgoing, ProduceError
from streams.settings import Settings

router = APIRouter(responses=problem_responses(401))


class WebhookSecret(BaseModel):
    secret: str = Field(description="Verify deliveries with it (Standard Webhooks, `whsec_…`).")
    previous_valid_until: datetime | None = Field(
        default=None, description="Until then deliveries are also signed with the previous secret."
    )


class DeliveryAttempt(BaseModel):
    webhook_id: str
    event: str
    seq: int
    url: str
    attempt: int
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's answer; null when there was none.")
    duration_ms: float
    outcome: str = Field(description="delivered, retrying, failed, gone or refused.")
    error: str
    response: str = Field(description="The first bytes of the receiver's answer.")


class JobDeliveries(BaseModel):
    job_id: str
    deliveries: list[DeliveryAttempt]


class Redelivery(BaseModel):
    job_id: str
    redelivered: int = Field(description="Events handed to the notifier again.")


def _secrets(request: Request) -> WebhookSecrets:
    return request.app.state.webhook_secrets


def _answer(secrets: WebhookSecrets, tenant: str, grace_s: float) -> WebhookSecret:
    generation = secrets.generation(tenant)
    until = None
    if generation.previous is not None and time.time() < generation.rotated_at + grace_s:
        until = datetime.fromtimestamp(generation.rotated_at + grace_s, UTC)
    return WebhookSecret(secret=secrets.secret(tenant), previous_valid_until=until)


@router.get("/v1/webhook-secret", response_model=WebhookSecret)
async def webhook_secret(request: Request, response: Response, tenant: str = Depends(current_tenant)) -> WebhookSecret:
    """The secret your webhook deliveries are signed with."""
    response.headers["Cache-Control"] = "no-store"
    settings: Settings = request.app.state.settings
    return _answer(_secrets(request), tenant, settings.webhook_secret_grace_s)


@router.post("/v1/webhook-secret:rotate", response_model=WebhookSecret, responses=problem_responses(503))
async def rotate_secret(request: Request, response: Response, tenant: str = Depends(current_tenant)) -> WebhookSecret:
    """A new secret; the previous one keeps signing too for JOBSTREAM_WEBHOOK_SECRET_GRACE_S."""
    response.headers["Cache-Control"] = "no-store"
    settings: Settings = request.app.state.settings
    secrets = _secrets(request)
    record, generation = secrets.rotation(tenant)
    try:
        await request.app.state.producer.send_many([record])
    except ProduceError:
        raise Problem(
            503, "Kafka unavailable", "the secret was not rotated; retry later", headers={"Retry-After": "1"}
        ) from None
    secrets.remember(tenant, generation)
    return _answer(secrets, tenant, settings.webhook_secret_grace_s)


@router.get("/v1/jobs/{job_id}/webhooks", response_model=JobDeliveries, responses=problem_responses(404))
async def job_deliveries(job_id: str, request: Request, tenant: str = Depends(current_tenant)) -> JobDeliveries:
    """Every delivery attempt of the job's events, oldest first (as far as the sink has stored them)."""
    await _job_events(request, tenant, job_id)
    store: ClickHouseStore = request.app.state.store
    rows = await asyncio.to_thread(
        store.query,
        "SELECT webhook_id, event, seq, url, attempt, attempted_at, status_code, duration_ms, outcome, error, "
        "response FROM webhook_deliveries FINAL WHERE tenant = {tenant:String} AND job_id = {job_id:String} "
        "ORDER BY attempted_at, attempt",
        {"tenant": tenant, "job_id": job_id},
    )
    return JobDeliveries(job_id=job_id, deliveries=[_attempt(row) for row in rows])


def _attempt(row: tuple[Any, ...]) -> DeliveryAttempt:
    wid, event, seq, url, attempt, at, code, duration, outcome, error, response = row
    return DeliveryAttempt(
        webhook_id=wid,
        event=event,
        seq=seq,
        url=url,
        attempt=attempt,
        attempted_at=at if at.tzinfo else at.replace(tzinfo=UTC),
        status_code=code or None,
        duration_ms=duration,
        outcome=outcome,
        error=error,
        response=response,
    )


@router.post(
    "/v1/jobs/{job_id}/webhooks:redeliver",
    status_code=202,
    response_model=Redelivery,
    responses=problem_responses(404, 409, 503, s409="The job has no webhook"),
)
async def redeliver(job_id: str, request: Request, tenant: str = Depends(current_tenant)) -> Redelivery:
    """Send the job's events (those its webhook asked for, as stored so far) again, as new deliveries
    with the same webhook-ids."""
    events = await _job_events(request, tenant, job_id)
    queued = next((e for e in events if e.type.value == "queued"), None)
    subscription = Subscription.from_queued(tenant, queued.data) if queued is not None else None
    if subscription is None:
        raise Problem(409, "No webhook", f"job {job_id!r} was submitted without a webhook")
    settings: Settings = request.app.state.settings
    now = time.time()
    records = [
        Outgoing(
            settings.topic(topics.WEBHOOK_RETRIES),
            job_id.encode(),
            Delivery(
                webhook_id(job_id, e.type.value, e.seq),
                job_id,
                tenant,
                e.type.value,
                e.seq,
                subscription.url,
                wire.dumps(e),
                1,
                now,
                now,
            ).to_bytes(),
        )
        for e in events
        if e.type.value in subscription.events
    ]
    try:
        await request.app.state.producer.send_many(records)
    except ProduceError:
        raise Problem(
            503, "Kafka unavailable", "the redelivery may not be recorded; retry later", headers={"Retry-After": "1"}
        ) from None
    return Redelivery(job_id=job_id, redelivered=len(records))


async def _job_events(request: Request, tenant: str, job_id: str) -> list[Any]:
    store: ClickHouseStore = request.app.state.store
    events = await store.ajob_events(tenant, job_id)
    if not events and await job_view(store, request.app.state.recent, tenant, job_id) is None:
        raise Problem(404, "Job not found", f"no job {job_id!r}")
    if not events:
        events = request.app.state.recent.events(tenant, job_id)
    return events
