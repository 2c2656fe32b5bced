"""A real webhook receiver for tests: an HTTP server on a thread, on a port the OS picked.

Every request is recorded (path, headers, body, arrival time); ``plan(path, [500, 500])`` makes
the next requests to a path answer those codes (then 200); ``hold`` makes it answer slowly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._plans: dict[str, list[int]] = {}
        self._delays: dict[str, float] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                path = self.path
                with receiver._lock:
                    receiver.requests.append(
                        Received(path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
                    )
                    plan = receiver._plans.get(path)
                    code = plan.pop(0) if plan else 200
                    delay = receiver._delays.get(path, 0.0)
                if delay:
                    threading.Event().wait(delay)  # a slow receiver
                payload = b'{"ok": true}' if code < 300 else b"x" * 5000
                self.send_response(code)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def plan(self, path: str, codes: list[int]) -> None:
        with self._lock:
            self._plans[path] = list(codes)

    def hold(self, path: str, seconds: float) -> None:
        with self._lock:
            self._delays[path] = seconds

    def at(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]
