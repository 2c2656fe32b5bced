"""The HTTP API: submit a job (202 + Location), read its status and result.

A submit answers 202 only after Kafka acknowledged both the request (on
``jobs.requested``) and its ``queued`` event (on ``jobs.events``); anything else
is a 503 and the client may retry.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ingest_api.auth import current_tenant
from ingest_api.problems import Problem, field_errors
from ingest_api.recent import RecentJobs
from processors.calculations import registry
from sink.store import ClickHouseStore
from streams import topics
from streams.events import (
    EventType, JobEvent, JobRequested, JobStatus, JobView, dumps, new_job_id, utcnow,
)
from streams.producer import AsyncProducer, Outgoing, ProduceError
from streams.settings import Settings

logger = logging.getLogger(__name__)

router = APIRouter()


class JobSubmission(BaseModel):
    """What a client posts to ``/v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="A registered calculation, see GET /v1/kinds.", examples=["stats.describe"])
    params: dict[str, Any] = Field(description="The calculation's parameters.")
    priority: int = Field(default=0, ge=0, le=9, description="Higher runs first (0..9).")
    timeout_s: float | None = Field(default=None, gt=0, le=86_400, description="Give up after this long running.")


class Links(BaseModel):
    self: str
    events: str
    result: str


class Accepted(BaseModel):
    job_id: str
    status: JobStatus
    links: Links


class JobOut(BaseModel):
    job_id: str
    kind: str
    status: JobStatus
    progress: float
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    links: Links


def links_for(request: Request, job_id: str) -> Links:
    settings: Settings = request.app.state.settings
    base = (settings.public_url or "").rstrip("/")
    path = f"{base}/v1/jobs/{job_id}"
    return Links(self=path, events=f"{path}/events", result=f"{path}/result")


@router.post("/v1/jobs", status_code=202, response_model=Accepted, responses={
    400: {"description": "Malformed JSON"}, 413: {"description": "Body too large"},
    422: {"description": "Invalid job"}, 503: {"description": "Kafka unavailable; retry later"},
})
async def submit(body: JobSubmission, request: Request, response: Response,
                 tenant: str = Depends(current_tenant)) -> Accepted:
    try:
        calc = registry.get(body.kind)
    except registry.UnknownKind:
        raise Problem(422, "Unknown kind", f"no calculation named {body.kind!r}",
                      errors=[{"field": "kind", "reason": "unknown kind"}],
                      known_kinds=[c.kind for c in registry.kinds()]) from None
    try:
        calc.validate(body.params)
    except ValidationError as exc:
        raise Problem(422, "Invalid params", f"params do not fit {body.kind!r}",
                      errors=field_errors(exc.errors(), ("params",))) from None

    settings: Settings = request.app.state.settings
    job_id = new_job_id()
    now = utcnow()
    job = JobRequested(job_id=job_id, tenant=tenant, ts=now, kind=body.kind, params=body.params,
                       priority=body.priority, timeout_s=body.timeout_s)
    queued = JobEvent(job_id=job_id, tenant=tenant, seq=0, ts=now, type=EventType.QUEUED, kind=body.kind,
                      data={"priority": body.priority, "timeout_s": body.timeout_s})
    key = job_id.encode()
    producer: AsyncProducer = request.app.state.producer
    recent: RecentJobs = request.app.state.recent
    recent.add(queued)  # before the send: the fanout may see this job's next events before we resume
    try:
        await producer.send_many([
            Outgoing(settings.topic(topics.REQUESTED), key, dumps(job)),
            Outgoing(settings.topic(topics.EVENTS), key, dumps(queued)),
        ])
    except ProduceError as exc:
        recent.discard(tenant, job_id)
        logger.warning("submit refused: %s", exc, extra={"job_id": job_id, "tenant": tenant})
        raise Problem(503, "Kafka unavailable", "the job was not accepted; retry later",
                      headers={"Retry-After": str(settings.retry_after_s)}) from None
    links = links_for(request, job_id)
    response.headers["Location"] = links.self
    response.headers["Retry-After"] = str(settings.retry_after_s)
    logger.info("accepted job", extra={"job_id": job_id, "tenant": tenant, "kind": body.kind})
    return Accepted(job_id=job_id, status=JobStatus.QUEUED, links=links)


async def load_view(request: Request, tenant: str, job_id: str) -> JobView:
    """The job's state from the store, or from the recent-accepts cache if the sink lags; else 404."""
    store: ClickHouseStore = request.app.state.store
    recent: RecentJobs = request.app.state.recent
    events = await store.ajob_events(tenant, job_id)
    view = JobView.fold(events + recent.events(tenant, job_id))
    if view is None:
        raise Problem(404, "Job not found", f"no job {job_id!r}")
    return view


@router.get("/v1/jobs/{job_id}", response_model=JobOut, responses={404: {"description": "No such job"}})
async def status(job_id: str, request: Request, response: Response, tenant: str = Depends(current_tenant)) -> JobOut:
    view = await load_view(request, tenant, job_id)
    if not view.status.terminal:
        response.headers["Retry-After"] = str(request.app.state.settings.retry_after_s)
    return JobOut(**view.model_dump(exclude={"tenant", "seq", "calc_version"}), links=links_for(request, job_id))


@router.get("/v1/jobs/{job_id}/result", responses={
    202: {"description": "Not finished yet"}, 404: {"description": "No such job"},
    409: {"description": "The job failed or was cancelled"},
})
async def result(job_id: str, request: Request, tenant: str = Depends(current_tenant)) -> Any:
    view = await load_view(request, tenant, job_id)
    if view.status is JobStatus.SUCCEEDED:
        return {"job_id": job_id, "calc_version": view.calc_version, "result": view.result}
    if view.status.terminal:
        raise Problem(409, f"Job {view.status.value}", "there is no result", error=view.error)
    links = links_for(request, job_id)
    retry = str(request.app.state.settings.retry_after_s)
    return Response(status_code=202, headers={"Location": links.self, "Retry-After": retry})


@router.get("/v1/kinds")
async def kinds() -> list[dict[str, Any]]:
    return [
        {"kind": c.kind, "version": c.version, "description": c.description, "params": c.params.model_json_schema()}
        for c in registry.kinds()
    ]

