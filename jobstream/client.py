"""A small Python client for jobstream: submit, read, cancel, list, dead letters, and streams that resume.

``watch_job`` (httpx + httpx-sse) reconnects after a drop with ``Last-Event-ID`` and the
server's ``retry:`` hint, so the caller sees every event once, in order; ``event.type ==
"reset"`` means reload ``GET /v1/jobs/{id}``. ``submit_job`` sends an ``Idempotency-Key`` (a
new UUID unless given) and reuses it on every retry, so a retry never makes a second job.
``JobstreamClient`` covers the other routes the CLI uses, raising ``ApiError``. Examples in the README.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from httpx_sse import SSEError, connect_sse
from tenacity import Retrying, retry_if_exception, stop_after_attempt

from streams.errors import JobstreamError

logger = logging.getLogger(__name__)

TERMINAL_TYPES = frozenset({"succeeded", "failed", "cancelled"})
CONTROL_TYPES = frozenset({"disconnect"})
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})


class ApiError(JobstreamError):
    """The API refused a request (``status``, ``problem`` is its problem+json body), or could not be
    reached (``status`` 0)."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        super().__init__(f"{status} {problem.get('title', '')}: {problem.get('detail', '')}".strip())
        self.status = status
        self.problem = problem


class StreamError(ApiError):
    """The server refused the stream for good (401, 403, 404, 400, ...); ``problem`` is its body."""


@dataclass(frozen=True)
class StreamEvent:
    """One event: ``id`` (seq, or a position on /v1/events), ``type`` (SSE ``event:``), ``data`` (the JSON)."""

    id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES


class EventStream:
    """Iterates one stream across reconnects. ``last_event_id`` always holds the resume point."""

    def __init__(
        self,
        client: httpx.Client,
        path: str,
        params: dict[str, Any] | None = None,
        last_event_id: str | None = None,
        ends_on_terminal: bool = True,
        max_attempts: int | None = 10,
        retry_ms: int = 2000,
    ) -> None:
        self.client = client
        self.path = path
        self.params = {k: v for k, v in (params or {}).items() if v not in (None, [], ())}
        self.last_event_id = last_event_id
        self.ends_on_terminal = ends_on_terminal
        self.max_attempts = max_attempts  # failed connects in a row before giving up (None: forever)
        self.retry_ms = retry_ms
        self.reconnects = 0

    def __iter__(self) -> Iterator[StreamEvent]:
        failures = 0
        while True:
            wait_s = self.retry_ms / 1000
            try:
                for event in self._once():
                    failures = 0
                    yield event
                    if event.terminal and self.ends_on_terminal:
                        return
                else:
                    if self._finished:
                        return
            except (httpx.TransportError, SSEError) as exc:
                failures += 1
                logger.info("stream %s dropped (%s); resuming after %s", self.path, exc, self.last_event_id)
            except _RetryLater as exc:
                failures += 1
                wait_s = exc.after_s
            if self.max_attempts is not None and failures >= self.max_attempts:
                raise StreamError(0, {"title": "Gave up", "detail": f"{failures} failed attempts in a row"})
            self.reconnects += 1
            time.sleep(wait_s * (1 if failures <= 1 else min(2 ** (failures - 1), 16)))

    def _once(self) -> Iterator[StreamEvent]:
        self._finished = False
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        with connect_sse(self.client, "GET", self.path, params=self.params, headers=headers) as source:
            response = source.response
            if response.status_code == 204:  # nothing more will come (we already saw the end)
                self._finished = True
                return
            if response.status_code in RETRYABLE_STATUS:
                response.read()
                raise _RetryLater(float(response.headers.get("retry-after", self.retry_ms / 1000)))
            if response.status_code != 200:
                response.read()
                try:
                    problem = response.json()
                except ValueError:
                    problem = {"title": response.text}
                raise StreamError(response.status_code, problem)
            for sse in source.iter_sse():
                if sse.retry is not None:
                    self.retry_ms = sse.retry
                if sse.id:
                    self.last_event_id = sse.id
                if not sse.data:  # id-only frames move the resume point; heartbeats carry nothing
                    continue
                if sse.event in CONTROL_TYPES:
                    logger.info("server closed the stream: %s", sse.data)
                    continue
                yield StreamEvent(id=sse.id, type=sse.event, data=orjson.loads(sse.data))


class _RetryLater(JobstreamError):
    """The server asked to come back later (tenacity retries on it)."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s


READ_TIMEOUT_S = 60.0  # several server heartbeats (JOBSTREAM_SSE_HEARTBEAT_S, 15 s): silence means a dead link


def tls_verify(ca_file: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """How https:// servers are checked: against ``ca_file``, else ``JOBSTREAM_CA_FILE``, else the system's CAs
    (a service with a certificate from a private CA, e.g. JOBSTREAM_TLS_CERTFILE, needs its CA here)."""
    ca_file = ca_file or os.environ.get("JOBSTREAM_CA_FILE") or None
    return ssl.create_default_context(cafile=ca_file)


def api_client(
    base_url: str,
    api_key: str | None,
    read_timeout_s: float = READ_TIMEOUT_S,
    *,
    ca_file: str | os.PathLike[str] | None = None,
) -> httpx.Client:
    """An HTTP client for the jobstream API, with the key as a Bearer token when there is one; https:// is
    checked against ``ca_file`` (default ``JOBSTREAM_CA_FILE``, else the system's CAs)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(10, read=read_timeout_s),
        verify=tls_verify(ca_file),
    )


def _client(base_url: str, api_key: str | None, client: httpx.Client | None) -> httpx.Client:
    return client if client is not None else api_client(base_url, api_key)


def watch_job(
    base_url: str,
    job_id: str,
    *,
    api_key: str | None = None,
    token: str | None = None,
    last_event_id: str | None = None,
    client: httpx.Client | None = None,
    max_attempts: int | None = 10,
) -> Iterator[StreamEvent]:
    """A job's events from the start (or after ``last_event_id``) to its terminal event."""
    http = _client(base_url, api_key, client)
    try:
        yield from EventStream(
            http,
            f"/v1/jobs/{job_id}/events",
            {"token": token},
            last_event_id,
            ends_on_terminal=True,
            max_attempts=max_attempts,
        )
    finally:
        if client is None:
            http.close()


def watch_events(
    base_url: str,
    *,
    kind: Sequence[str] = (),
    status: Sequence[str] = (),
    job_id: Sequence[str] = (),
    api_key: str | None = None,
    token: str | None = None,
    last_event_id: str | None = None,
    client: httpx.Client | None = None,
    max_attempts: int | None = None,
) -> Iterator[StreamEvent]:
    """Every event of the caller's jobs (filtered), forever."""
    http = _client(base_url, api_key, client)
    params = {"kind": list(kind), "status": list(status), "job_id": list(job_id), "token": token}
    try:
        yield from EventStream(
            http, "/v1/events", params, last_event_id, ends_on_terminal=False, max_attempts=max_attempts
        )
    finally:
        if client is None:
            http.close()


class SubmitError(ApiError):
    """The server refused the submit (4xx), or every attempt failed; ``problem`` is its body."""


class _SubmitAgain(JobstreamError):
    """A retryable answer to a submit (tenacity retries on it)."""

    def __init__(self, status: int, problem: dict[str, Any], after_s: float) -> None:
        super().__init__(problem.get("detail", ""))
        self.status = status
        self.problem = problem
        self.after_s = after_s


def _retryable(exc: BaseException) -> bool:
    """A retryable answer, or a transport error that may pass; an untrusted certificate will not."""
    if isinstance(exc, _SubmitAgain):
        return True
    if not isinstance(exc, httpx.TransportError):
        return False
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return False
        cause = cause.__cause__ or cause.__context__
    return True


MAX_SUBMIT_WAIT_S = 30.0  # the longest pause between two attempts, whatever Retry-After says


def submit_job(
    base_url: str,
    kind: str,
    params: dict[str, Any],
    *,
    priority: int | None = None,
    timeout_s: float | None = None,
    idempotency_key: str | None = None,
    api_key: str | None = None,
    client: httpx.Client | None = None,
    max_attempts: int = 5,
) -> dict[str, Any]:
    """Submit one job and return the ``Accepted`` body (``job_id``, ``status``, ``links``).

    Always sends an ``Idempotency-Key`` (``idempotency_key``, else a new UUID) and reuses it on
    every retry (connection errors, 429, 502, 503, 504, after ``Retry-After``): a 503 may mean the
    job landed anyway, and only the key makes the retry return that job instead of a second one.
    Raises ``SubmitError`` for a 4xx, or when ``max_attempts`` all failed.
    """
    key = idempotency_key or str(uuid.uuid4())
    body: dict[str, Any] = {"kind": kind, "params": params}
    if priority is not None:
        body["priority"] = priority
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    http = _client(base_url, api_key, client)

    def attempt() -> dict[str, Any]:
        response = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": key})
        if response.status_code in (200, 202):
            return response.json()
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.text}
        if response.status_code in RETRYABLE_STATUS:
            after = float(response.headers.get("retry-after", 1) or 1)
            raise _SubmitAgain(response.status_code, problem, min(after, MAX_SUBMIT_WAIT_S))
        raise SubmitError(response.status_code, problem)

    def wait(state: Any) -> float:
        exc = state.outcome.exception()
        return exc.after_s if isinstance(exc, _SubmitAgain) else min(2.0**state.attempt_number, MAX_SUBMIT_WAIT_S)

    try:
        for tried in Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(max_attempts),
            wait=wait,
            reraise=True,
        ):
            with tried:
                return attempt()
    except _SubmitAgain as exc:
        raise SubmitError(exc.status, exc.problem) from None
    except httpx.TransportError as exc:
        raise SubmitError(0, {"title": "Unreachable", "detail": str(exc)}) from None
    finally:
        if client is None:
            http.close()
    raise AssertionError("unreachable")  # Retrying either returns or raises


def _problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"title": response.reason_phrase, "detail": response.text[:200]}
    return body if isinstance(body, dict) else {"title": response.reason_phrase}


class JobstreamClient:
    """The job, listing and dead-letter routes over one HTTP connection; every error is an ``ApiError``.

    Ids go into paths quoted, so an id can never name another route.
    """

    def __init__(self, base_url: str, api_key: str | None = None, client: httpx.Client | None = None) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.http = _client(base_url, api_key, client)
        self._own = client is None

    def __enter__(self) -> JobstreamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.http.close()

    def _call(
        self,
        method: str,
        path: str,
        *,
        ok: frozenset[int] = frozenset({200}),
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self.http.request(method, path, params=query, json=json, headers=headers)
        except httpx.TransportError as exc:
            raise ApiError(0, {"title": "Unreachable", "detail": f"{self.base_url}: {exc}"}) from None
        if response.status_code not in ok:
            raise ApiError(response.status_code, _problem_of(response))
        return response

    @staticmethod
    def _job_path(job_id: str) -> str:
        return f"/v1/jobs/{quote(job_id, safe='')}"

    def job(self, job_id: str) -> dict[str, Any]:
        """``GET /v1/jobs/{id}``: status, progress, timings, and the result or error when finished."""
        return self._call("GET", self._job_path(job_id)).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /v1/jobs/{id}``: the job as it is now; ``ApiError`` 409 when it already finished."""
        return self._call("DELETE", self._job_path(job_id), ok=frozenset({202})).json()

    def jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """``GET /v1/jobs``: one page, newest first (``jobs``, ``next_cursor``)."""
        return self._call(
            "GET", "/v1/jobs", params={"status": status, "kind": kind, "limit": limit, "cursor": cursor}
        ).json()

    def dead_letters(
        self, *, limit: int | None = None, cursor: str | None = None, redriven: bool | None = None
    ) -> dict[str, Any]:
        """``GET /v1/dead-letters``: one page, newest first (``dead_letters``, ``next_cursor``); ``redriven``:
        only those that were (True) or were not (False) re-driven."""
        query = {"limit": limit, "cursor": cursor, "redriven": None if redriven is None else str(redriven).lower()}
        return self._call("GET", "/v1/dead-letters", params=query).json()

    def redrive(
        self, dead_letter_id: str, params: dict[str, Any] | None = None, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """``POST /v1/dead-letters/{id}:redrive``: the new job (``job_id``, ``links``); with ``idempotency_key``,
        a retry answers with the same job (200) and never makes a second one."""
        path = f"/v1/dead-letters/{quote(dead_letter_id, safe='')}:redrive"
        body = {} if params is None else {"params": params}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        return self._call("POST", path, ok=frozenset({200, 202}), json=body, headers=headers).json()
