"""An ASGI app served by a real uvicorn on a thread of the test process, on a port the OS picked."""

from __future__ import annotations

import threading

import uvicorn

from tests.support.waiting import wait_until


class Server:
    """uvicorn serving an app on a thread, on a port the OS picked."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=2)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, 60, message="uvicorn to start")
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
