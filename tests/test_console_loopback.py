"""The console (/ui) without API keys, on loopback, in a real browser against the real stack: it just
works (no key asked), a job page shows the params of a job submitted over HTTP, and a real dead letter
is re-driven from the dead-letters page. Screenshots go to ``artifacts/console/`` (gitignored)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from streams.settings import Settings
from tests.support.browser import ARTIFACTS, chromium
from tests.support.kafka import produce_requests
from tests.support.service_process import ServiceProcess, service_env
from tests.support.waiting import wait_until
from tests.support.workers import PLUGIN, Worker, isolated

pytestmark = pytest.mark.kafka

SHOTS = ARTIFACTS / "console"


@pytest.fixture(scope="module")
def scoped(settings: Settings) -> Settings:
    return isolated(settings)


@pytest.fixture(scope="module")
def worker(scoped: Settings) -> Iterator[Worker]:
    worker = Worker(scoped).start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def service(scoped: Settings, worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """API + gateway + sink with no API keys: it binds loopback only, and everyone is the default tenant."""
    home = tmp_path_factory.mktemp("console-loopback")
    serve = ServiceProcess(
        ["serve", "--log-level", "warning"],
        service_env(scoped.kafka_bootstrap or "", scoped.topic_prefix, home, plugins=PLUGIN),
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
    """A fresh tab: nothing in sessionStorage (no key, no params remembered from a submit)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def nav(page: Any, section: str) -> None:
    page.get_by_role("navigation", name="Console sections").get_by_role("link", name=section, exact=True).click()


def status_of(page: Any) -> str:
    return page.locator("#job-status").inner_text().strip()


def test_on_loopback_without_keys_the_console_lists_and_submits_without_asking_for_a_key(
    service: ServiceProcess, page: Any
):
    earlier = httpx.post(f"{service.url}/v1/jobs", json={"kind": "test.work", "params": {"value": 1}}, timeout=30)
    assert earlier.status_code == 202, earlier.text
    job_id = earlier.json()["job_id"]
    # the page lists what GET /v1/jobs lists, then follows events from then on: a job the sink has not
    # stored yet when the page loads shows only on its next event (CI run of 2026-12-01)
    wait_until(
        lambda: job_id in {j["job_id"] for j in httpx.get(f"{service.url}/v1/jobs", timeout=30).json()["jobs"]},
        60,
        message="the job listed by the API",
    )
    page.goto(f"{service.url}/ui")
    page.locator("#live-state[data-state='live']").wait_for(timeout=60_000)
    page.locator(f"tr[data-job='{job_id}']").wait_for(timeout=30_000)  # the jobs list loaded
    assert page.get_by_role("dialog", name="API key").is_hidden()
    assert page.get_by_role("button", name="Forget API key").is_hidden()  # there is no key to forget
    shot(page, "20-loopback-jobs")

    nav(page, "Submit")
    page.get_by_label("Kind").select_option("test.work")
    page.get_by_label("Value").fill("5")
    page.get_by_role("button", name="Submit job").click()
    page.wait_for_url("**/ui/jobs/*", timeout=30_000)
    wait_until(lambda: status_of(page) == "succeeded", 90, 0.1, message="the submitted job to succeed")
    assert page.get_by_role("dialog", name="API key").is_hidden()  # never asked
    assert page.evaluate("sessionStorage.getItem('jobstream.apiKey')") is None
    shot(page, "21-loopback-submitted")


def test_a_job_submitted_over_http_shows_its_params_on_its_page(service: ServiceProcess, page: Any):
    params = {"value": 41, "steps": 2, "sleep_s": 0.1}
    answer = httpx.post(f"{service.url}/v1/jobs", json={"kind": "test.work", "params": params}, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    assert httpx.get(f"{service.url}/v1/jobs/{job_id}").json()["params"] == params  # read-your-writes
    page.goto(f"{service.url}/ui/jobs/{job_id}")  # a tab that never saw the submit
    wait_until(lambda: status_of(page) == "succeeded", 90, 0.1, message="the job to succeed")
    shown = page.locator("#params")
    shown.wait_for()
    assert orjson.loads(shown.inner_text()) == params
    # after the sink has it (a new API process would read it from ClickHouse only), still there
    assert httpx.get(f"{service.url}/v1/jobs/{job_id}").json()["params"] == params
    shot(page, "22-job-params-from-api")


def test_a_real_dead_letter_is_redriven_from_the_console_and_then_shows_as_redriven(
    service: ServiceProcess, scoped: Settings, page: Any
):
    job_id = uuid.uuid4().hex
    bad = {"job_id": job_id, "tenant": "default", "kind": "stats.describe", "params": {"values": [1, 2, 3, 4]}}
    produce_requests(scoped, orjson.dumps({**bad, "priority": "high"}))  # a worker cannot decode it

    def listed() -> bool:
        page_ = httpx.get(f"{service.url}/v1/dead-letters", params={"limit": 1000}).json()["dead_letters"]
        return any(d["job_id"] == job_id for d in page_)

    wait_until(listed, 90, 0.2, message="the dead letter listed by the API")
    page.goto(f"{service.url}/ui/dead-letters")
    row = page.locator("#dead-letters-body tr", has=page.get_by_role("link", name=job_id, exact=True))
    row.wait_for(timeout=30_000)
    assert row.get_attribute("data-redriven") == "false" and "undecodable" in row.inner_text()
    assert page.get_by_role("button", name="Load more").is_hidden()  # one page holds them all
    letter_id = row.get_attribute("data-id")
    shot(page, "23-dead-letters-open")
    page.get_by_role("button", name=f"Re-drive {job_id}").click()
    page.wait_for_url("**/ui/jobs/*", timeout=30_000)
    new_job = page.url.rsplit("/", 1)[1]
    assert new_job != job_id
    wait_until(lambda: status_of(page) == "succeeded", 90, 0.1, message="the re-driven job to succeed")
    assert orjson.loads(page.locator("#result").inner_text())["mean"] == 2.5
    assert orjson.loads(page.locator("#params").inner_text()) == {"values": [1, 2, 3, 4]}
    shot(page, "24-redriven-job")

    nav(page, "Dead letters")
    page.locator("#dead-letters-status").wait_for()
    wait_until(lambda: page.locator("#dead-letters-status").inner_text() != "Loading…", 30, 0.1)
    assert page.locator(f"#dead-letters-body tr[data-id='{letter_id}']").count() == 0  # hidden by default
    page.get_by_label("Show").select_option("redriven")
    done = page.locator(f"#dead-letters-body tr[data-id='{letter_id}']")
    done.wait_for(timeout=30_000)
    assert done.get_attribute("data-redriven") == "true"
    assert done.get_by_role("link", name=new_job, exact=True).is_visible()
    shot(page, "25-dead-letters-redriven")
