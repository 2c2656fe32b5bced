"""A real browser (Debian's Chromium, driven by Playwright) follows a job from a page on another origin.

The page (served by a tiny ``http.server`` on another port: another origin) runs the README's
``followJob`` exactly as written: it gets a stream token with ``fetch`` + ``Authorization``
(a CORS preflight), opens ``EventSource`` with ``?token=``, and must see every event of the job to
the terminal one while the HTTP process is killed and restarted mid-stream — with the same token
(the key persisted), and with a new one when the old one expired meanwhile.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.settings import Settings
from tests.support import ROOT
from tests.support.service_process import ServiceProcess, service_env
from tests.support.sse import Reader
from tests.support.waiting import wait_until
from tests.support.workers import PLUGIN, Worker, isolated

pytestmark = pytest.mark.kafka

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
KEY = f"key-{uuid.uuid4().hex}"


def follow_job_js() -> str:
    """The README's page snippet, verbatim (the block after its ``follow-job.js`` marker)."""
    readme = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- follow-job\.js:.*?-->\n```js\n(.*?)```", readme, re.S)
    assert found, "README.md lost its follow-job.js block"
    return found.group(1)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>follow a job</title></head>
<body><h1>job <code id="job"></code></h1><ol id="events"></ol>
<script>
%(follow_job)s
const q = new URLSearchParams(location.search);
const api = q.get("api"), key = q.get("key"), job = q.get("job"), ttl = Number(q.get("ttl"));
window.seen = []; window.tokens = []; window.done = false;
document.getElementById("job").textContent = job;
async function getToken(jobId) {
  const answer = await fetch(`${api}/v1/stream-tokens`, {
    method: "POST", body: JSON.stringify({ job_id: jobId, ttl_s: ttl }),
    headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json" } });
  if (!answer.ok) throw new Error(`stream token: HTTP ${answer.status}`);
  const token = await answer.json();
  window.tokens.push(token.expires_at);
  return token.token;
}
followJob(api, job, getToken, (type, event, id) => {
  window.seen.push([id, type]);
  const item = document.createElement("li");
  item.textContent = `${id} ${type} ${JSON.stringify(event.data)}`;
  document.getElementById("events").appendChild(item);
  if (["succeeded", "failed", "cancelled"].includes(type)) window.done = true;
});
</script></body></html>
"""


# A page that follows a job with a browser WebSocket: a stream token (fetch + Authorization), then
# `new WebSocket(...?token=)`; it records every message and how the socket closed.
SOCKET_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>a job over WebSocket</title></head>
<body><ol id="events"></ol>
<script>
const q = new URLSearchParams(location.search);
const api = q.get("api"), key = q.get("key"), job = q.get("job");
window.seen = []; window.ended = null;
(async () => {
  const answer = await fetch(`${api}/v1/stream-tokens`, {
    method: "POST", body: JSON.stringify({ job_id: job }),
    headers: { "Authorization": `Bearer ${key}`, "Content-Type": "application/json" } });
  const { token } = await answer.json();
  const socket = new WebSocket(`${api.replace(/^http/, "ws")}/v1/jobs/${job}/ws?token=${token}`);
  socket.onmessage = (message) => {
    const frame = JSON.parse(message.data);
    window.seen.push([frame.id, frame.event]);
    const item = document.createElement("li");
    item.textContent = `${frame.id} ${frame.event} ${JSON.stringify(frame.data.data)}`;
    document.getElementById("events").appendChild(item);
  };
  socket.onclose = (event) => { window.ended = [event.code, event.reason]; };
})();
</script></body></html>
"""


class PageServer:
    """Serves the pages from 127.0.0.1 on a port of its own: an origin other than the API's."""

    def __init__(self) -> None:
        pages = {"/": (PAGE % {"follow_job": follow_job_js()}).encode(), "/ws": SOCKET_PAGE.encode()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = pages.get(self.path.split("?")[0])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture(scope="module")
def worker(scoped: Settings) -> Iterator[Worker]:
    worker = Worker(scoped).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def service(
    scoped: Settings, worker: Worker, page_server: PageServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServiceProcess, str]]:
    """API + gateway + sink in a process of their own (restartable), CORS open to the page's origin."""
    home = tmp_path_factory.mktemp("browser-service")
    tenant = f"web-{uuid.uuid4().hex[:6]}"
    serve = ServiceProcess(
        ["serve", "--log-level", "warning"],
        service_env(
            scoped.kafka_bootstrap or "",
            scoped.topic_prefix,
            home,
            plugins=PLUGIN,
            api_keys=f"{tenant}={KEY}",
            cors_origins=page_server.origin,
        ),
        home / "serve.log",
    ).start()
    yield serve, tenant
    serve.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` (or apt-get install chromium) installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def submit(base: str) -> str:
    answer = httpx.post(
        f"{base}/v1/jobs",
        json={"kind": "test.work", "params": {"sleep_s": 12, "steps": 12}},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def history(base: str, job_id: str) -> list[list[str]]:
    """Every event of the finished job, read in one go with the API key."""
    reader = Reader(base, f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {KEY}"}).start()
    reader.wait_done()
    return [[e.id, e.event] for e in reader.events]


def follow_across_a_restart(
    service: tuple[ServiceProcess, str], page_server: PageServer, browser: Any, tmp_path: Path, ttl_s: float
) -> tuple[list[list[str]], list[list[str]], list[str]]:
    """Open the page on a running job, kill -9 and restart the API mid-stream; what the page saw."""
    serve, _ = service
    job = submit(serve.url)
    page = browser.new_page()
    try:
        page.goto(f"{page_server.origin}/?api={serve.url}&key={KEY}&job={job}&ttl={ttl_s}")
        wait_until(lambda: len(page.evaluate("window.seen")) >= 3, 60, 0.1, message="the page to see 3 events")
        serve.kill9()
        expires = datetime.fromisoformat(page.evaluate("window.tokens")[0]).timestamp()
        if ttl_s < 60:  # restart only once the token has expired: the reconnect must be refused
            wait_until(lambda: time.time() > expires + 0.5, ttl_s + 5, 0.1, message="the token to expire")
        serve.start()
        wait_until(
            lambda: page.evaluate("window.done"),
            90,
            0.2,
            message=f"the terminal event on the page (seen {page.evaluate('window.seen')})",
        )
        seen = page.evaluate("window.seen")
        page.screenshot(path=str(tmp_path / f"follow-job-ttl{ttl_s:g}.png"), full_page=True)
        return seen, history(serve.url, job), page.evaluate("window.tokens")
    finally:
        page.close()


def test_a_page_on_another_origin_follows_a_job_across_a_restart_with_its_token(
    service: tuple[ServiceProcess, str], page_server: PageServer, browser: Any, tmp_path: Path
):
    seen, expected, tokens = follow_across_a_restart(service, page_server, browser, tmp_path, ttl_s=300)
    assert seen == expected and expected[-1][1] == "succeeded"
    assert [t for _, t in seen].count("progress") >= 3
    assert len(tokens) == 1  # the restarted process accepted the token it issued before
    assert (tmp_path / "follow-job-ttl300.png").stat().st_size > 0


def test_a_page_whose_token_expired_meanwhile_gets_a_new_one_and_resumes(
    service: tuple[ServiceProcess, str], page_server: PageServer, browser: Any, tmp_path: Path
):
    seen, expected, tokens = follow_across_a_restart(service, page_server, browser, tmp_path, ttl_s=2)
    assert seen == expected and expected[-1][1] == "succeeded"  # nothing lost, nothing twice
    assert len(tokens) == 2  # the reconnect was refused (401), the page fetched a new token and resumed


def test_a_browser_websocket_receives_every_event_of_a_job_then_a_normal_close(
    service: tuple[ServiceProcess, str], page_server: PageServer, browser: Any, tmp_path: Path
):
    serve, _ = service
    job = submit(serve.url)
    page = browser.new_page()
    try:
        page.goto(f"{page_server.origin}/ws?api={serve.url}&key={KEY}&job={job}")
        wait_until(lambda: page.evaluate("window.ended"), 90, 0.2, message="the socket to close")
        seen, closed = page.evaluate("window.seen"), page.evaluate("window.ended")
        page.screenshot(path=str(tmp_path / "job-over-websocket.png"), full_page=True)
    finally:
        page.close()
    assert closed == [1000, "finished"]
    expected = history(serve.url, job)
    assert seen == expected and expected[-1][1] == "succeeded"
    assert [t for _, t in seen].count("progress") >= 3
