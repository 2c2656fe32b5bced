"""The console (/ui) in a real browser (Debian's Chromium via Playwright) against the real stack.

One ``jobstream serve`` process with API keys (the console asks for the key once), a real worker
running the test calculations, one browser. Screenshots go to ``artifacts/console/`` (gitignored).
The burst test prints what it measured (page load, events/s the live table took, frame gaps).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from streams.settings import Settings
from tests.support.browser import ARTIFACTS, chromium
from tests.support.service_process import ServiceProcess, service_env
from tests.support.waiting import wait_until
from tests.support.workers import PLUGIN, Worker, isolated

pytestmark = pytest.mark.kafka

KEY = f"console-{uuid.uuid4().hex}"
SHOTS = ARTIFACTS / "console"


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    return isolated(settings, batch_max_size=64)


@pytest.fixture(scope="module")
def worker(scoped: Settings) -> Iterator[Worker]:
    worker = Worker(scoped).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def service(scoped: Settings, worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """API + gateway + sink with API keys; the console's tenant may run SQL."""
    home = tmp_path_factory.mktemp("console-service")
    tenant = f"ops-{uuid.uuid4().hex[:6]}"
    serve = ServiceProcess(
        ["serve", "--log-level", "warning"],
        service_env(
            scoped.kafka_bootstrap or "",
            scoped.topic_prefix,
            home,
            plugins=PLUGIN,
            api_keys=f"{tenant}={KEY}",
            sql_tenants=tenant,
        ),
        home / "serve.log",
    ).start()
    yield serve
    serve.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A tab that already holds the key in sessionStorage (as after typing it once)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    context.add_init_script(f"sessionStorage.setItem('jobstream.apiKey', {KEY!r})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def submit(service: ServiceProcess, params: dict, kind: str = "test.work") -> str:
    answer = httpx.post(
        f"{service.url}/v1/jobs",
        json={"kind": kind, "params": params},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    return answer.json()["job_id"]


def shot(page: Any, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def nav(page: Any, section: str) -> None:
    page.get_by_role("navigation", name="Console sections").get_by_role("link", name=section, exact=True).click()


def status_of(page: Any) -> str:
    return page.locator("#job-status").inner_text().strip()


def test_the_console_asks_for_the_key_once_then_a_job_submitted_by_the_form_goes_live_to_succeeded(
    service: ServiceProcess, browser: Any
):
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{service.url}/ui")
        dialog = page.get_by_role("dialog", name="API key")
        dialog.wait_for()
        page.get_by_role("textbox", name="API key").fill(KEY)
        page.get_by_role("button", name="Use this key").click()
        page.locator("#live-state[data-state='live']").wait_for(timeout=60_000)
        assert KEY not in page.url and page.evaluate("sessionStorage.getItem('jobstream.apiKey')") == KEY
        shot(page, "01-jobs-empty")

        nav(page, "Submit")
        page.get_by_label("Kind").select_option("test.work")
        page.get_by_label("Sleep S").fill("4")
        page.get_by_label("Steps").fill("8")
        page.get_by_label("Value").fill("7")
        shot(page, "02-submit-form")
        page.get_by_role("button", name="Submit job").click()

        page.wait_for_url("**/ui/jobs/*", timeout=30_000)
        job_id = page.url.rsplit("/", 1)[1]
        seen = [wait_until(lambda: status_of(page) in {"running", "succeeded"} and status_of(page), 60, 0.05)]
        shot(page, "03-job-running")
        wait_until(lambda: status_of(page) == "succeeded", 90, 0.1, message="the page to show succeeded")
        seen.append(status_of(page))
        assert seen == ["running", "succeeded"], seen  # it was watched running, live
        timeline = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.type)")
        assert timeline[0] == "queued" and "running" in timeline and timeline[-1] == "succeeded", timeline
        assert timeline.count("progress") >= 3
        assert '"value": 7' in page.locator("#params").inner_text()  # submitted from this tab: its params
        page.locator("#result").wait_for()
        timings = page.locator("#timings").inner_text()
        assert "End to end" in timings and "–" not in timings.split("End to end")[1].split("\n")[1]
        shot(page, "04-job-succeeded")

        nav(page, "Jobs")
        row = page.locator(f"tr[data-job='{job_id}']")
        row.wait_for()
        wait_until(lambda: row.get_attribute("data-status") == "succeeded", 60, 0.1, message="the row to succeed")
        assert page.get_by_role("dialog", name="API key").is_hidden()  # asked once
        shot(page, "05-jobs-list")
    finally:
        context.close()
    assert not errors, errors


def test_a_job_that_succeeded_before_the_page_opened_shows_a_full_progress_bar(service: ServiceProcess, page: Any):
    """The listing carries no progress: a row built from it must not show a succeeded job as 0% done."""
    job_id = submit(service, {"values": [1, 2, 3]}, kind="stats.describe")
    headers = {"Authorization": f"Bearer {KEY}"}

    def listed_succeeded() -> bool:
        listing = httpx.get(f"{service.url}/v1/jobs", params={"limit": 50}, headers=headers, timeout=10).json()
        return any(j["job_id"] == job_id and j["status"] == "succeeded" for j in listing["jobs"])

    wait_until(listed_succeeded, 60, 0.1, message="the job to be listed as succeeded")
    page.goto(f"{service.url}/ui")
    bar = page.locator(f"tr[data-job='{job_id}'] progress")
    bar.wait_for(timeout=30_000)
    assert bar.evaluate("el => el.value") == 1


def test_a_long_job_is_cancelled_from_its_page(service: ServiceProcess, page: Any):
    job_id = submit(service, {"sleep_s": 120, "steps": 240})
    page.goto(f"{service.url}/ui/jobs/{job_id}")
    wait_until(lambda: status_of(page) == "running", 90, 0.1, message="the job to run")
    wait_until(lambda: page.locator("#timeline li[data-type='progress']").count() >= 1, 30, 0.1)
    page.get_by_role("button", name="Cancel").click()
    wait_until(lambda: status_of(page) == "cancelled", 60, 0.1, message="the page to show cancelled")
    assert page.locator("#timeline li").last.get_attribute("data-type") == "cancelled"
    assert page.get_by_role("button", name="Cancel").is_disabled()
    wait_until(lambda: page.get_by_role("button", name="Re-run").is_enabled(), 30, 0.1, message="Re-run enabled")
    shot(page, "06-job-cancelled")
    state = httpx.get(f"{service.url}/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert state["status"] == "cancelled"


def test_the_sql_page_runs_a_query_and_downloads_it_as_csv(service: ServiceProcess, page: Any):
    page.goto(f"{service.url}/ui/sql")
    page.get_by_label("SQL query").fill("SELECT number AS n, toString(number * 2) AS twice FROM numbers(3)")
    page.get_by_role("button", name="Run").click()
    page.locator("#sql-result tbody tr").nth(2).wait_for()
    assert page.locator("#sql-result thead th").all_text_contents() == ["n", "twice"]
    assert page.locator("#sql-result tbody tr").count() == 3
    with page.expect_download() as download:
        page.get_by_role("link", name="Download CSV").click()
    assert Path(download.value.path()).read_text() == "n,twice\n0,0\n1,2\n2,4\n"
    shot(page, "07-sql")
    page.get_by_label("SQL query").fill("DROP TABLE job_events")
    page.get_by_role("button", name="Run").click()
    wait_until(lambda: "Read-only" in page.locator("#sql-status").inner_text(), 30, 0.1)


def test_analytics_replays_and_dead_letters_pages_render(service: ServiceProcess, page: Any):
    job_ids = [submit(service, {"value": i}) for i in range(3)]
    headers = {"Authorization": f"Bearer {KEY}"}
    wait_until(
        lambda: all(
            httpx.get(f"{service.url}/v1/jobs/{j}", headers=headers).json()["status"] == "succeeded" for j in job_ids
        ),
        90,
        0.2,
        message="3 jobs to succeed",
    )
    page.goto(f"{service.url}/ui/analytics")
    wait_until(lambda: page.locator(".chart canvas").count() == 4, 60, 0.1, message="4 charts")
    wait_until(lambda: "finished" in page.locator("#totals").inner_text(), 30, 0.1)
    shot(page, "08-analytics")

    planned = httpx.post(
        f"{service.url}/v1/replays",
        json={"since": (datetime.now(UTC) - timedelta(hours=1)).isoformat(), "dry_run": True},
        headers=headers,
    )
    assert planned.status_code == 200, planned.text
    nav(page, "Replays")
    link = page.get_by_role("link", name=planned.json()["replay_id"])
    link.wait_for()
    link.click()
    wait_until(lambda: "planned" in page.locator("#replay-state").inner_text(), 30, 0.1)
    shot(page, "09-replay")

    nav(page, "Dead letters")
    page.get_by_role("heading", name="Dead letters").wait_for()
    shot(page, "10-dead-letters")

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: the table scrolls sideways, the rest reflows
    nav(page, "Jobs")
    page.locator("#jobs-body tr").first.wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    shot(page, "12-phone-jobs")


FRAME_PROBE = """() => {
  window.frameGaps = []; let last = performance.now();
  const shifts = window.layoutShift = { value: 0 };
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) if (!e.hadRecentInput) shifts.value += e.value;
  }).observe({ type: "layout-shift", buffered: false });
  const tick = (now) => { window.frameGaps.push(now - last); last = now; window.probe = requestAnimationFrame(tick); };
  window.probe = requestAnimationFrame(tick);
  window.perSecond = []; let seen = window.consoleStats.events;
  window.rateProbe = setInterval(() => {
    const now = window.consoleStats.events; window.perSecond.push(now - seen); seen = now;
  }, 1000);
}"""


def test_the_live_table_keeps_up_with_a_burst_of_events(service: ServiceProcess, page: Any):
    started = time.monotonic()
    page.goto(f"{service.url}/ui/jobs?kind=test.square")
    page.locator("#live-state[data-state='live']").wait_for(timeout=60_000)
    load = page.evaluate(
        """() => ({ dcl: performance.getEntriesByType("navigation")[0].domContentLoadedEventEnd,
                   listed: performance.getEntriesByName("jobs-listed")[0].startTime,
                   live: performance.getEntriesByName("jobs-live")[0].startTime })"""
    )
    page.evaluate(FRAME_PROBE)
    before = page.evaluate("window.consoleStats.events")
    jobs, batch = 3000, 250
    burst_start = time.monotonic()
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as client:

        def post(first: int) -> int:
            body = {"jobs": [{"kind": "test.square", "params": {"x": first + k}} for k in range(batch)]}
            return client.post("/v1/jobs:batch", json=body).status_code

        with ThreadPoolExecutor(4) as pool:  # 4 batches in flight: as fast as the API takes them
            assert set(pool.map(post, range(0, jobs, batch))) == {202}
    submitted_s = time.monotonic() - burst_start
    # each job: queued, running, succeeded at least
    wait_until(
        lambda: page.evaluate("window.consoleStats.events") - before >= 3 * jobs,
        240,
        0.2,
        message="the page to receive every event",
    )
    took_s = time.monotonic() - burst_start
    wait_until(lambda: page.evaluate("window.consoleStats.rows") >= 500, 30, 0.1)
    round_trip = time.monotonic()
    page.evaluate("1")  # the page still answers at once
    round_trip_ms = (time.monotonic() - round_trip) * 1000
    measured = page.evaluate(
        """() => { cancelAnimationFrame(window.probe); clearInterval(window.rateProbe);
                   const gaps = window.frameGaps.slice(1).sort((a, b) => a - b);
                   const q = (p) => gaps[Math.min(gaps.length - 1, Math.floor(p * gaps.length))];
                   return { events: window.consoleStats.events, frames: window.consoleStats.frames,
                            maxWork: window.consoleStats.maxFrameWorkMs, p50: q(0.5), p95: q(0.95), p99: q(0.99),
                            max: gaps[gaps.length - 1], rows: document.querySelectorAll("#jobs-body tr").length,
                            cls: window.layoutShift.value, peak: Math.max(...window.perSecond) } }"""
    )
    events = measured["events"] - before
    print(
        f"\nconsole page load: DOMContentLoaded {load['dcl']:.0f} ms, first page of jobs {load['listed']:.0f} ms, "
        f"live {load['live']:.0f} ms (test start to live {1000 * (time.monotonic() - started):.0f} ms incl. burst)\n"
        f"live table burst: {jobs} jobs submitted in {submitted_s:.1f} s; {events} events in {took_s:.1f} s "
        f"= {events / took_s:.0f} events/s on the page (peak {measured['peak']} in one second); "
        f"{measured['frames']} flushes, "
        f"flush work max {measured['maxWork']:.1f} ms; "
        f"frame gaps p50 {measured['p50']:.1f} / p95 {measured['p95']:.1f} / "
        f"p99 {measured['p99']:.1f} / max {measured['max']:.1f} ms; rows kept {measured['rows']}; "
        f"layout shift {measured['cls']:.3f}; evaluate round trip {round_trip_ms:.0f} ms"
    )
    page.screenshot(path=str(SHOTS / "11-live-burst.png"), timeout=120_000)  # the viewport: 500 rows are long
    assert measured["rows"] == 500  # the live table keeps its newest 500 rows
    assert measured["frames"] < events / 2  # events were batched per frame, not painted one by one
    # no frame's DOM work froze the page (generous: these machines run at load ~70 on 2 cores)
    assert measured["maxWork"] < 1000, measured
    wait_until(
        lambda: page.locator("#jobs-body tr[data-status='succeeded']").count() == 500,
        60,
        0.1,
        message="every row shown to reach succeeded",
    )
    submitted = page.locator("#jobs-body tr td:nth-child(5)").all_text_contents()
    assert "–" not in submitted  # a queued event landing after its running one still dates the row


def test_the_console_is_served_by_the_api_process_with_its_library_and_a_strict_policy(service: ServiceProcess):
    shell = httpx.get(f"{service.url}/ui")
    assert shell.status_code == 200 and shell.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in shell.headers["content-security-policy"]
    assert httpx.get(f"{service.url}/ui/jobs/{uuid.uuid4().hex}").text == shell.text  # every page is the shell
    module = httpx.get(f"{service.url}/ui/static/js/main.js")
    assert module.status_code == 200 and "javascript" in module.headers["content-type"]
    assert httpx.get(f"{service.url}/ui/vendor/uplot/uPlot.esm.js").status_code == 200  # installed by make console
    assert httpx.get(f"{service.url}/ui/no-such-page").status_code == 404
    assert httpx.get(f"{service.url}/ui/static/../../jobstream/server.py").status_code == 404
