"""HTTP face of replays: plan / start, watch, stop, resume, diff, and one-job rerun.

A replay runs in the API process that accepted it; its record lives in Kafka, so any
replica answers ``GET /v1/replays/{id}`` and can resume it if that process died.
A tenant only ever selects, sees and diffs its own jobs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from edge.auth import current_tenant
from edge.problems import Problem, problem_responses
from replay import diff
from replay.book import ReplayBook
from replay.errors import ReplayConflict, ReplayError, ReplayRefused
from replay.models import Replay, ReplayRequest, ReplaySelection, replayed_job_id
from replay.runner import Replayer
from store.jobs import job_view
from streams.events import JobStatus
from streams.settings import Settings
from telemetry import tracing

router = APIRouter(tags=["replays"], responses=problem_responses(400, 401, 413, 415, 422))

RERUN_WINDOW = timedelta(minutes=1)  #: how far around a job's submit time :rerun looks for its request


class ReplayLinks(BaseModel):
    self: str
    diff: str


class ReplayOut(Replay):
    outcomes: dict[str, int] | None = None  #: equal / changed / failed / pending, from ClickHouse
    links: ReplayLinks


class ReplayList(BaseModel):
    replays: list[ReplayOut]


class DiffPage(BaseModel):
    replay_id: str
    outcomes: dict[str, int]
    jobs: list[diff.DiffRow]


class Rerun(BaseModel):
    job_id: str
    replay_of: str
    replay_id: str
    status: JobStatus
    calc_version: str
    links: dict[str, str]


def _base(request: Request) -> str:
    settings: Settings = request.app.state.settings
    return (settings.public_url or "").rstrip("/")


def _out(request: Request, replay: Replay, outcomes: dict[str, int] | None = None) -> ReplayOut:
    path = f"{_base(request)}/v1/replays/{replay.replay_id}"
    return ReplayOut(**replay.model_dump(), outcomes=outcomes, links=ReplayLinks(self=path, diff=f"{path}/diff"))


_STATUS: dict[type[ReplayError], int] = {ReplayRefused: 422, ReplayConflict: 409}


def _problem(exc: ReplayError) -> Problem:
    errors = [{"field": exc.field, "reason": exc.detail}] if exc.field else []
    return Problem(_STATUS[type(exc)], exc.title, exc.detail, errors=errors)


def _find(request: Request, tenant: str, replay_id: str) -> Replay:
    book: ReplayBook = request.app.state.replays
    replay = book.get(replay_id)
    if replay is None or replay.tenant != tenant:  # another tenant's replay does not exist for you
        raise Problem(404, "Replay not found", f"no replay {replay_id!r}")
    return replay


@router.post(
    "/v1/replays",
    response_model=ReplayOut,
    status_code=202,
    responses={
        200: {"model": ReplayOut, "description": "Dry run: the plan; nothing was emitted"},
        **problem_responses(409),
    },
)
async def start_replay(
    body: ReplayRequest, request: Request, response: Response, tenant: str = Depends(current_tenant)
) -> ReplayOut:
    """Select past requests of the caller's jobs and re-run them as new jobs (or, with ``dry_run``, plan only).
    Its jobs continue the request's trace (``traceparent`` in the answer)."""
    trace = tracing.from_http("jobstream.replay", request.headers)
    with tracing.ending_on_error(trace):
        out = await _start_replay(body, request, response, tenant, trace)
    if trace is not None:
        trace.end(str(response.status_code or 202))
    return out


async def _start_replay(
    body: ReplayRequest, request: Request, response: Response, tenant: str, trace: tracing.JobTrace | None
) -> ReplayOut:
    replayer: Replayer = request.app.state.replayer
    selection = ReplaySelection(**body.model_dump(exclude={"rate", "dry_run"}))
    try:
        replay = await asyncio.to_thread(replayer.plan, tenant, selection, body.rate, body.dry_run)
    except ReplayError as exc:
        raise _problem(exc) from None
    out = _out(request, replay)
    response.headers["Location"] = out.links.self
    if body.dry_run:
        response.status_code = 200
    else:
        replayer.start(replay, headers=None if trace is None else trace.headers)
        if trace is not None:
            response.headers["traceparent"] = trace.traceparent
    return out


@router.get("/v1/replays", response_model=ReplayList)
async def list_replays(request: Request, tenant: str = Depends(current_tenant)) -> ReplayList:
    """The caller's replays, newest first."""
    book: ReplayBook = request.app.state.replays
    return ReplayList(replays=[_out(request, r) for r in book.of_tenant(tenant)])


@router.get("/v1/replays/{replay_id}", response_model=ReplayOut, responses=problem_responses(404))
async def get_replay(replay_id: str, request: Request, tenant: str = Depends(current_tenant)) -> ReplayOut:
    """Progress: jobs emitted of the total, and how many re-runs finished equal, changed or failed."""
    replay = _find(request, tenant, replay_id)
    outcomes = None
    if replay.emitted:
        outcomes = await asyncio.to_thread(diff.summary, request.app.state.store, tenant, replay_id)
    return _out(request, replay, outcomes)


@router.get("/v1/replays/{replay_id}/diff", response_model=DiffPage, responses=problem_responses(404))
async def replay_diff(
    replay_id: str,
    request: Request,
    tenant: str = Depends(current_tenant),
    outcome: Literal["equal", "changed", "failed", "pending"] | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
    offset: int = Query(default=0, ge=0),
) -> DiffPage:
    """Original vs replayed result per job (the ``replay_diff`` view), filtered by outcome."""
    _find(request, tenant, replay_id)
    store = request.app.state.store
    outcomes = await asyncio.to_thread(diff.summary, store, tenant, replay_id)
    rows = await asyncio.to_thread(diff.rows, store, tenant, replay_id, outcome, limit, offset)
    return DiffPage(replay_id=replay_id, outcomes=outcomes, jobs=rows)


@router.post(
    "/v1/replays/{replay_id}:stop", response_model=ReplayOut, status_code=202, responses=problem_responses(404, 409)
)
async def stop_replay(replay_id: str, request: Request, tenant: str = Depends(current_tenant)) -> ReplayOut:
    """Stop at the next job; the position is recorded and ``:resume`` carries on without duplicates."""
    replay = _find(request, tenant, replay_id)
    if replay.done:
        raise Problem(409, f"Replay {replay.state.value}", "only a running or stopped replay can be stopped")
    replayer: Replayer = request.app.state.replayer
    await asyncio.to_thread(replayer.stop, replay)
    return _out(request, replay)


@router.post(
    "/v1/replays/{replay_id}:resume", response_model=ReplayOut, status_code=202, responses=problem_responses(404, 409)
)
async def resume_replay(replay_id: str, request: Request, tenant: str = Depends(current_tenant)) -> ReplayOut:
    """Carry on a stopped (or orphaned, or failed) replay from its last checkpoint."""
    replay = _find(request, tenant, replay_id)
    replayer: Replayer = request.app.state.replayer
    try:
        replay = await asyncio.to_thread(replayer.resume, replay)
    except ReplayError as exc:
        raise _problem(exc) from None
    return _out(request, replay)


@router.post(
    "/v1/jobs/{job_id}:rerun",
    response_model=Rerun,
    status_code=202,
    responses=problem_responses(404, 410, s410="The job's request is no longer in Kafka (retention)"),
)
async def rerun(job_id: str, request: Request, response: Response, tenant: str = Depends(current_tenant)) -> Rerun:
    """Run one job again (say, a failed one) with the current calculation version, as a new job.

    Answers once Kafka has the new job, so a GET of its Location right after never 404s. The new job
    continues the request's trace (``traceparent`` in the answer)."""
    trace = tracing.from_http("jobstream.rerun", request.headers)
    with tracing.ending_on_error(trace):
        answer = await _rerun(job_id, request, response, tenant, trace)
    if trace is not None:
        trace.end(str(response.status_code or 202))
    return answer


async def _rerun(
    job_id: str, request: Request, response: Response, tenant: str, trace: tracing.JobTrace | None
) -> Rerun:
    view = await job_view(request.app.state.store, request.app.state.recent, tenant, job_id)
    if view is None:
        raise Problem(404, "Job not found", f"no job {job_id!r}")
    around = view.submitted_at
    assert around is not None
    selection = ReplaySelection(job_ids=[job_id], since=around - RERUN_WINDOW, until=around + RERUN_WINDOW)
    replayer: Replayer = request.app.state.replayer
    try:
        replay = await asyncio.to_thread(replayer.plan, tenant, selection)
    except ReplayError as exc:
        raise _problem(exc) from None
    if replay.total == 0:
        raise Problem(410, "Request gone", f"the request of job {job_id!r} is no longer in Kafka")
    await asyncio.to_thread(replayer.start, replay, None, True, None if trace is None else trace.headers)
    new_id = replayed_job_id(replay.replay_id, job_id)
    path = f"{_base(request)}/v1/jobs/{new_id}"
    response.headers["Location"] = path
    if trace is not None:
        response.headers["traceparent"] = trace.traceparent
    return Rerun(
        job_id=new_id,
        replay_of=job_id,
        replay_id=replay.replay_id,
        status=JobStatus.QUEUED,
        calc_version=replay.versions[view.kind],
        links={
            "self": path,
            "events": f"{path}/events",
            "result": f"{path}/result",
            "replay": f"{_base(request)}/v1/replays/{replay.replay_id}",
        },
    )
