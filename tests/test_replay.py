"""Replay against the real broker: a real API (+ sink + gateway) and real worker processes.

The story every test tells: ``test.square`` version 1 ran in production with two bugs
(off by one past 5, refuses negatives); version 2 fixes them; an operator replays
history with version 2 and compares. Workers start with version 1 only, then move
to a worker that has both (as a deployment would).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from calculations import registry
from jobstream.cli import app as cli_app
from jobstream.client import watch_job
from replay.models import Replay, ReplayState, replayed_job_id
from replay.select import RequestScanner
from store.clickhouse import ClickHouseStore
from streams import topics
from streams.kafka_config import KafkaConnection
from streams.settings import Settings
from tests.support.servers import Server
from tests.support.waiting import wait_until
from tests.support.workers import Worker, isolated

pytestmark = pytest.mark.kafka

V1 = "tests.calc_plugin"
V1_V2 = "tests.calc_plugin,tests.calc_plugin_v2"
ALICE, BOB = "alice-" + uuid.uuid4().hex, "bob-" + uuid.uuid4().hex


class ReplayStack:
    """API + sink + gateway in this process (one app), one worker process whose plugins can change."""

    def __init__(self, settings: Settings, store: ClickHouseStore) -> None:
        from jobstream.server import create_app

        registry.load_plugins([V1, "tests.calc_plugin_v2"])  # the API validates and plans with version 2 current
        self.settings = isolated(
            settings,
            api_keys=SecretStr(f"alice={ALICE},bob={BOB}"),
            replay_checkpoint_jobs=5,
            replay_max_rate=10_000.0,
            replay_max_jobs=1_000_000,
        )
        self.server = Server(create_app(self.settings, store=store)).start()
        self.url = self.server.url
        wait_until(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 60, message="healthz")
        self.alice = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=60)
        self.bob = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {BOB}"}, timeout=60)
        self.worker: Worker | None = None
        self.plugins = ""

    def use_worker(self, plugins: str) -> None:
        """Run the processors with ``plugins`` (a restart when they change: a new deployment)."""
        if self.worker is not None and self.plugins == plugins:
            return
        if self.worker is not None:
            self.worker.stop()
        self.plugins = plugins
        scoped = self.settings.model_copy(update={"plugins": plugins})
        self.worker = Worker(scoped, log=Path(scoped.data_dir) / f"worker-{len(plugins)}.log").start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.alice.close()
        self.bob.close()
        self.server.stop()

    # --- helpers ---------------------------------------------------------------------------
    def submit(self, client: httpx.Client, xs: list[float]) -> list[str]:
        ids = []
        for x in xs:
            response = client.post("/v1/jobs", json={"kind": "test.square", "params": {"x": x}})
            assert response.status_code == 202, response.text
            ids.append(response.json()["job_id"])
        return ids

    def wait_status(
        self, client: httpx.Client, job_ids: list[str], statuses: set[str] | None = None, timeout_s: float = 120
    ) -> dict[str, dict]:
        """Wait until every job is terminal (and in the store, so SQL sees it); returns the views."""
        views: dict[str, dict] = {}

        def done() -> bool:
            for job_id in job_ids:
                if job_id not in views:
                    view = client.get(f"/v1/jobs/{job_id}").json()
                    if view.get("status") in ("succeeded", "failed", "cancelled"):
                        views[job_id] = view
            return len(views) == len(job_ids)

        wait_until(done, timeout_s, 0.2, message=f"{len(job_ids)} jobs to finish")
        if statuses is not None:
            assert {v["status"] for v in views.values()} <= statuses, views
        return views

    def wait_replay(self, client: httpx.Client, replay_id: str, condition, timeout_s: float = 120) -> dict:
        latest: dict = {}

        def check() -> bool:
            latest.update(client.get(f"/v1/replays/{replay_id}").json())
            return condition(latest)

        wait_until(check, timeout_s, 0.2, message=f"replay {replay_id}")
        return latest

    def emitted_requests(self, replay_id: str) -> list[str]:
        """Every request this replay put on jobs.requested (job ids, duplicates included)."""
        with RequestScanner(
            KafkaConnection.from_settings(self.settings), self.settings.topic(topics.REQUESTED)
        ) as scanner:
            ranges = scanner.ranges(None, None)
            return [f.request.job_id for f in scanner.scan(ranges) if f.request.replay_id == replay_id]

    def requested_ends(self) -> dict[int, int]:
        with RequestScanner(
            KafkaConnection.from_settings(self.settings), self.settings.topic(topics.REQUESTED)
        ) as scanner:
            return scanner.ends()


def tick() -> datetime:
    """A boundary strictly between what was produced before and what is produced after (ms stamps)."""
    mark = datetime.now(UTC)
    wait_until(lambda: datetime.now(UTC) - mark > timedelta(milliseconds=5), 1, 0.001, message="clock")
    return mark


def settled(replay: dict) -> bool:
    """Completed, and every re-run finished and stored (the diff sees all of them)."""
    outcomes = replay.get("outcomes") or {}
    return (
        replay["state"] == "completed" and outcomes.get("pending") == 0 and sum(outcomes.values()) == replay["emitted"]
    )


def iso(ts: datetime) -> str:
    return ts.isoformat()


@pytest.fixture(scope="module")
def rs(settings: Settings, store: ClickHouseStore) -> Iterator[ReplayStack]:
    stack = ReplayStack(settings, store)
    try:
        yield stack
    finally:
        stack.close()


def test_dry_run_plans_exactly_the_jobs_in_the_time_range_and_emits_nothing(rs: ReplayStack):
    rs.use_worker(V1)
    before = rs.submit(rs.alice, [1, 2])
    since = tick()
    inside = rs.submit(rs.alice, [3, 6, 7])
    rs.submit(rs.bob, [4])  # another tenant's job, inside the range
    until = tick()
    rs.submit(rs.alice, [8])
    ends = rs.requested_ends()

    response = rs.alice.post("/v1/replays", json={"since": iso(since), "until": iso(until), "dry_run": True})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert plan["state"] == "planned" and plan["total"] == 3 and plan["emitted"] == 0
    assert plan["by_kind"] == {"test.square": 3} and plan["versions"] == {"test.square": "2"}
    assert sum(p["selected"] for p in plan["partitions"]) == 3
    assert all(p["start"] <= p["end"] for p in plan["partitions"])
    assert rs.requested_ends() == ends  # a dry run emits nothing
    assert rs.alice.get(f"/v1/replays/{plan['replay_id']}").json()["state"] == "planned"
    assert len(before) == 2 and len(inside) == 3

    by_kind = rs.alice.post("/v1/replays", json={"since": iso(since), "kinds": ["stats.describe"], "dry_run": True})
    assert by_kind.json()["total"] == 0
    by_id = rs.alice.post("/v1/replays", json={"job_ids": [before[0], inside[2]], "dry_run": True}).json()
    assert by_id["total"] == 2
    # Bob's plan over the same range sees his one job only, and Alice's replay does not exist for him.
    assert (
        rs.bob.post("/v1/replays", json={"since": iso(since), "until": iso(until), "dry_run": True}).json()["total"]
        == 1
    )
    assert rs.bob.get(f"/v1/replays/{plan['replay_id']}").status_code == 404


def test_replay_with_the_fixed_version_shows_changed_jobs_and_leaves_originals_alone(
    rs: ReplayStack, store: ClickHouseStore
):
    rs.use_worker(V1)
    since = tick()
    originals = rs.submit(rs.alice, [2, 5, 6, 9, -1])
    until = tick()
    first = rs.wait_status(rs.alice, originals)
    assert [first[j]["status"] for j in originals] == ["succeeded"] * 4 + ["failed"]
    assert first[originals[2]]["result"] == {"y": 37.0}  # version 1's bug

    rs.use_worker(V1_V2)  # the fix is deployed
    response = rs.alice.post("/v1/replays", json={"since": iso(since), "until": iso(until), "rate": 50})
    assert response.status_code == 202, response.text
    replay_id = response.json()["replay_id"]
    assert response.headers["location"].endswith(f"/v1/replays/{replay_id}")
    done = rs.wait_replay(rs.alice, replay_id, settled)
    # -1 failed in version 1 and succeeds now: changed, like 6 and 9.
    assert done["emitted"] == 5 and done["outcomes"] == {"equal": 2, "changed": 3, "failed": 0, "pending": 0}

    page = rs.alice.get(f"/v1/replays/{replay_id}/diff").json()
    by_original = {row["original_job_id"]: row for row in page["jobs"]}
    assert set(by_original) == set(originals)
    assert {j: by_original[j]["outcome"] for j in originals} == dict(
        zip(originals, ["equal", "equal", "changed", "changed", "changed"], strict=False)
    )
    six = by_original[originals[2]]
    assert (six["original_result"], six["replay_result"]) == ({"y": 37.0}, {"y": 36.0})
    assert (six["original_version"], six["replay_version"]) == ("1", "2")
    assert six["replay_job_id"] == replayed_job_id(replay_id, originals[2])
    changed = rs.alice.get(f"/v1/replays/{replay_id}/diff", params={"outcome": "changed"}).json()["jobs"]
    assert {row["original_job_id"] for row in changed} == set(originals[2:])

    # The originals are untouched: same status, result and version; the re-runs are jobs of their own.
    again = rs.wait_status(rs.alice, originals)
    assert {j: (v["status"], v["result"]) for j, v in again.items()} == {
        j: (v["status"], v["result"]) for j, v in first.items()
    }
    rows = store.query(
        "SELECT job_id, calc_version, result FROM job_results WHERE job_id = {j:String}", {"j": originals[2]}
    )
    assert [(r[1], orjson.loads(r[2])) for r in rows] == [("1", {"y": 37.0})]
    replayed = rs.alice.get(f"/v1/jobs/{six['replay_job_id']}").json()
    assert (replayed["status"], replayed["result"], replayed["replay_of"]) == ("succeeded", {"y": 36.0}, originals[2])
    # Analysts get the same answer from SQL.
    sql = store.query(
        "SELECT outcome, count() FROM replay_diff(tenant = 'alice', replay_id = {r:String}) "
        "GROUP BY outcome ORDER BY outcome",
        {"r": replay_id},
    )
    assert sql == [("changed", 3), ("equal", 2)]
    # Replaying the same range again re-runs the originals only, never the re-runs.
    assert rs.alice.post("/v1/replays", json={"since": iso(since), "dry_run": True}).json()["total"] == 5
    # Bob cannot read Alice's diff.
    assert rs.bob.get(f"/v1/replays/{replay_id}/diff").status_code == 404


def test_stop_and_resume_emit_every_job_exactly_once_even_after_a_lost_checkpoint(rs: ReplayStack):
    rs.use_worker(V1_V2)
    since = tick()
    originals = rs.submit(rs.alice, [float(i) for i in range(24)])
    until = tick()
    started = rs.alice.post("/v1/replays", json={"since": iso(since), "until": iso(until), "rate": 12})
    assert started.status_code == 202, started.text
    replay_id = started.json()["replay_id"]
    planned = Replay.model_validate(rs.server.server.config.app.state.replays.get(replay_id).model_dump())

    rs.wait_replay(rs.alice, replay_id, lambda r: r["emitted"] >= 6)
    assert rs.alice.post(f"/v1/replays/{replay_id}:stop").status_code == 202
    stopped = rs.wait_replay(rs.alice, replay_id, lambda r: r["state"] == "stopped")
    emitted = rs.emitted_requests(replay_id)
    assert len(emitted) == stopped["emitted"] < 24 and len(set(emitted)) == len(emitted)
    assert rs.alice.post(f"/v1/replays/{replay_id}:stop").status_code == 202  # stopping twice is harmless

    # Lose every checkpoint since the plan (as if the process died right after emitting): the
    # recorded position says nothing was emitted. Resuming must still not emit anything twice.
    book = rs.server.server.config.app.state.replays
    replayer = rs.server.server.config.app.state.replayer
    rewound = planned.model_copy(update={"state": ReplayState.STOPPED, "updated_at": datetime.now(UTC)})
    replayer._record(rewound)
    assert book.get(replay_id).emitted == 0

    resumed = rs.alice.post(f"/v1/replays/{replay_id}:resume")
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["emitted"] == len(emitted)  # it found what it had emitted after the checkpoint
    done = rs.wait_replay(rs.alice, replay_id, lambda r: r["state"] == "completed")
    assert done["emitted"] == 24
    all_emitted = rs.emitted_requests(replay_id)
    assert len(all_emitted) == 24 and set(all_emitted) == {replayed_job_id(replay_id, j) for j in originals}
    assert rs.alice.post(f"/v1/replays/{replay_id}:resume").status_code == 409  # completed: nothing to resume


def test_production_jobs_keep_completing_during_a_replay(rs: ReplayStack):
    rs.use_worker(V1_V2)
    since = tick()
    rs.submit(rs.alice, [float(i) for i in range(40)])
    replay_id = rs.alice.post("/v1/replays", json={"since": iso(since), "rate": 8}).json()["replay_id"]
    rs.wait_replay(rs.alice, replay_id, lambda r: r["emitted"] >= 2)
    production = rs.submit(rs.alice, [3.0] * 5)
    views = rs.wait_status(rs.alice, production, {"succeeded"}, timeout_s=60)
    assert all(v["result"] == {"y": 9.0} for v in views.values())
    during = rs.alice.get(f"/v1/replays/{replay_id}").json()
    assert during["state"] == "running" and during["emitted"] < 40  # finished while the replay ran
    assert rs.alice.post(f"/v1/replays/{replay_id}:stop").status_code == 202
    rs.wait_replay(rs.alice, replay_id, lambda r: r["state"] == "stopped")


def test_rerun_reruns_a_failed_job_with_the_current_version_and_streams_its_events(rs: ReplayStack):
    rs.use_worker(V1)
    (failed,) = rs.submit(rs.alice, [-3])
    rs.wait_status(rs.alice, [failed], {"failed"})
    rs.use_worker(V1_V2)

    response = rs.alice.post(f"/v1/jobs/{failed}:rerun")
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["replay_of"] == failed and body["calc_version"] == "2" and body["job_id"] != failed
    assert rs.alice.get(response.headers["location"]).status_code == 200  # never a 404 right after
    events = list(watch_job(rs.url, body["job_id"], api_key=ALICE))
    assert events[0].type == "queued" and events[0].data["data"]["replay_of"] == failed
    assert events[-1].type == "succeeded" and events[-1].data["data"]["result"] == {"y": 9.0}
    assert rs.alice.get(f"/v1/jobs/{failed}").json()["status"] == "failed"  # the original stays as it was
    assert rs.bob.post(f"/v1/jobs/{failed}:rerun").status_code == 404


def test_bad_replay_requests_are_422_naming_the_field(rs: ReplayStack):
    cases = [
        ({"kinds": ["no.such"]}, "kinds"),
        ({"calc_versions": {"test.square": "9"}}, "calc_versions"),
        ({"rate": 1e9}, "rate"),
        ({"since": "2026-01-02T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, ""),
        ({"rate": -1}, "rate"),
    ]
    for body, field in cases:
        response = rs.alice.post("/v1/replays", json={**body, "dry_run": True})
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert any(field in e["field"] for e in response.json()["errors"]), response.json()
    assert rs.alice.post("/v1/replays/nope:resume").status_code == 404
    assert httpx.post(f"{rs.url}/v1/replays", json={"dry_run": True}).status_code == 401


def test_cli_prints_the_plan_runs_with_yes_and_diffs(rs: ReplayStack):
    rs.use_worker(V1_V2)
    since = tick()
    originals = rs.submit(rs.alice, [1.5, 2.5])
    until = tick()
    rs.wait_status(rs.alice, originals, {"succeeded"})
    runner = CliRunner()
    common = ["--url", rs.url, "--api-key", ALICE]
    ends = rs.requested_ends()
    dry = runner.invoke(cli_app, ["replay", "--since", iso(since), "--until", iso(until), *common])
    assert dry.exit_code == 0, dry.output
    assert "2 jobs" in dry.output and "dry run" in dry.output and "test.square" in dry.output
    assert rs.requested_ends() == ends

    run = runner.invoke(
        cli_app, ["replay", "--since", iso(since), "--until", iso(until), "--yes", "--rate", "100", *common]
    )
    assert run.exit_code == 0, run.output
    replay_id = run.output.split("jobstream replay diff ")[1].split()[0]
    rs.wait_replay(rs.alice, replay_id, settled)
    diff = runner.invoke(cli_app, ["replay", "diff", replay_id, "--json", *common])
    assert diff.exit_code == 0, diff.output
    assert orjson.loads(diff.output)["outcomes"] == {"equal": 2, "changed": 0, "failed": 0, "pending": 0}
