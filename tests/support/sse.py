"""SSE test helpers: events to put on ``jobs.events``, a stream reader on a thread, a gateway in the
test process, and API keys for fresh tenants."""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
from httpx_sse import connect_sse
from pydantic import SecretStr

from store.clickhouse import ClickHouseStore
from streams.events import EventType, JobEvent
from streams.settings import Settings
from tests.support.servers import Server
from tests.support.waiting import wait_until

TERMINAL_SEQ = 2**31 - 1  #: every terminal event's seq (a contract: written out here, not imported)


def event(
    job_id: str, seq: int, type_: str = "progress", tenant: str = "default", kind: str = "test.sse", **data: Any
) -> JobEvent:
    if type_ == "progress" and "progress" not in data:
        data["progress"] = round(seq / (seq + 1), 9)  # grows with seq, as a run's progress does
    return JobEvent(job_id=job_id, tenant=tenant, seq=seq, type=EventType(type_), kind=kind, data=data)


def new_job() -> str:
    return uuid.uuid4().hex


class Reader:
    """Reads one SSE stream on a thread; ``events`` holds those with data, ``frames`` every frame."""

    def __init__(
        self, base_url: str, path: str, headers: dict[str, str] | None = None, params: dict[str, Any] | None = None
    ) -> None:
        self.base_url, self.path = base_url, path
        self.headers, self.params = headers or {}, params or {}
        self.events: list[Any] = []
        self.ids: list[str] = []  # every id seen, id-only frames included
        self.disconnects: list[dict[str, Any]] = []  # why the server ended the stream, if it said
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Reader:
        self._thread.start()
        wait_until(lambda: self.status is not None or self.done.is_set(), 30, message=f"response to {self.path}")
        return self

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.base_url, timeout=httpx.Timeout(30, read=120)) as client:
                with connect_sse(
                    client, "GET", self.path, headers=dict(self.headers), params=self.params or None
                ) as source:
                    self._response = source.response
                    self.response_headers = source.response.headers
                    self.status = source.response.status_code
                    if self.status != 200:
                        source.response.read()
                        return
                    for sse in source.iter_sse():
                        if sse.id and (not self.ids or self.ids[-1] != sse.id):
                            self.ids.append(sse.id)
                        if sse.event == "disconnect":
                            self.disconnects.append(orjson.loads(sse.data))
                        elif sse.data:
                            self.events.append(sse)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc
        finally:
            self.done.set()

    def types(self) -> list[str]:
        return [e.event for e in self.events]

    def seqs(self) -> list[int]:
        return [int(e.id) for e in self.events if e.event != "reset"]

    def data(self) -> list[dict[str, Any]]:
        return [orjson.loads(e.data) for e in self.events]

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        wait_until(
            lambda: len(self.events) >= count or self.done.is_set(),
            timeout_s,
            message=f"{count} events on {self.path} (have {len(self.events)})",
        )
        assert len(self.events) >= count, (self.types(), self.error)

    def wait_done(self, timeout_s: float = 60) -> None:
        assert self.done.wait(timeout_s), f"{self.path} still open after {timeout_s}s: {self.types()}"

    def close(self) -> None:
        """Hang up like a client that goes away (shut the socket down under the blocked read)."""
        if self._response is not None and not self.done.is_set():
            stream = self._response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        assert self.done.wait(30), "reader did not stop"


@contextmanager
def gateway(
    settings: Settings, store: ClickHouseStore, roles: frozenset[str] = frozenset({"gateway"}), **overrides: Any
) -> Iterator[Server]:
    """A gateway (only) in this process, on the session's topics, with some settings changed."""
    from jobstream.server import create_app

    server = Server(create_app(settings.model_copy(update=overrides), roles, store=store)).start()
    try:
        wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="gateway ready")
        yield server
    finally:
        server.stop()


def app_state(server: Server) -> Any:
    return server.server.config.app.state


def stored_seqs(store: ClickHouseStore, job_id: str) -> list[int]:
    return [
        r[0]
        for r in store.query(
            "SELECT DISTINCT seq FROM job_events WHERE job_id = {j:String} ORDER BY seq", {"j": job_id}
        )
    ]


def keys(*tenants: str) -> tuple[SecretStr, dict[str, str]]:
    """API keys for fresh tenant names (unique per test, so ClickHouse rows never mix)."""
    names = {t: f"{t}-{uuid.uuid4().hex[:8]}" for t in tenants}
    secrets = {t: f"key-{uuid.uuid4().hex}" for t in tenants}
    return SecretStr(",".join(f"{names[t]}={secrets[t]}" for t in tenants)), {t: names[t] for t in tenants} | {
        f"{t}:key": secrets[t] for t in tenants
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
