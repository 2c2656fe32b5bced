"""WebSocket test helpers: a stream reader on a thread (the ``websockets`` client), and the HTTP answer
to a refused upgrade."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.support.waiting import wait_until


def ws_url(base_url: str, path: str, params: dict[str, Any] | None = None) -> str:
    url = base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1) + path
    return f"{url}?{urlencode(params, doseq=True)}" if params else url


class SocketReader:
    """Reads one WebSocket stream on a thread: ``messages`` (decoded JSON), then ``close_code`` and
    ``close_reason``; ``max_queue``: messages the client buffers before it stops reading the socket;
    ``read=False``: hold off reading until ``reading`` is set (a client that stopped reading)."""

    def __init__(
        self,
        base_url: str,
        path: str,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        max_queue: int = 16,
        read: bool = True,
        compression: str | None = "deflate",
    ) -> None:
        self.url = ws_url(base_url, path, params)
        self.headers = headers or {}
        self.max_queue = max_queue
        self.compression = compression
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.opened = threading.Event()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.reading = threading.Event()  # cleared: the reader holds off (a client that stopped reading)
        if read:
            self.reading.set()
        self._socket: ClientConnection | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SocketReader:
        self._thread.start()
        wait_until(lambda: self.opened.is_set() or self.done.is_set(), 30, message=f"upgrade of {self.url}")
        assert self.error is None, self.error
        return self

    def _run(self) -> None:
        try:
            with connect(
                self.url,
                additional_headers=self.headers,
                proxy=None,
                max_queue=self.max_queue,
                compression=self.compression,
                open_timeout=30,
            ) as socket:
                self._socket = socket
                self.opened.set()
                try:
                    while True:
                        self.reading.wait()
                        self.messages.append(orjson.loads(socket.recv()))
                except ConnectionClosed:
                    pass
                self.close_code, self.close_reason = socket.close_code, socket.close_reason
        except BaseException as exc:  # noqa: BLE001 - surfaced by the test
            self.error = exc
        finally:
            self.done.set()

    def events(self) -> list[dict[str, Any]]:
        """The event messages (not ``reset`` nor ``position``)."""
        return [m for m in self.messages if m.get("event") not in ("reset", "position")]

    def ids(self) -> list[str]:
        return [m["id"] for m in self.messages if "id" in m]

    def seqs(self) -> list[int]:
        return [int(m["id"]) for m in self.events()]

    def types(self) -> list[str]:
        return [m["event"] for m in self.events()]

    def wait_for(self, count: int, timeout_s: float = 60) -> None:
        wait_until(
            lambda: len(self.events()) >= count or self.done.is_set(),
            timeout_s,
            message=f"{count} messages on {self.url} (have {len(self.events())})",
        )
        assert len(self.events()) >= count, (self.types(), self.error, self.close_code)

    def wait_done(self, timeout_s: float = 60) -> None:
        assert self.done.wait(timeout_s), f"{self.url} still open after {timeout_s}s: {self.types()}"
        assert self.error is None, self.error

    def close(self) -> None:
        """Hang up like a client that goes away."""
        self.reading.set()
        if self._socket is not None:
            self._socket.close()
        assert self.done.wait(30), "reader did not stop"


@dataclass(frozen=True)
class Refusal:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]


def refusal(base_url: str, path: str, headers: dict[str, str] | None = None, **params: Any) -> Refusal:
    """The HTTP answer to an upgrade the server refuses (fails the test if the socket opened)."""
    try:
        with connect(ws_url(base_url, path, params), additional_headers=headers or {}, proxy=None, open_timeout=30):
            pass
    except InvalidStatus as exc:
        response = exc.response
        body = orjson.loads(response.body) if response.body else {}
        return Refusal(response.status_code, {k.lower(): v for k, v in response.headers.raw_items()}, body)
    raise AssertionError(f"the upgrade of {path} was accepted")
