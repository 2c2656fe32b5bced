"""Processors without Kafka: seqs, retry backoff, outcome classification, and the real process pool."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from calculations import registry
from processors.executor import JobSpec, NoControl, OutcomeStatus, run_batch, run_jobs
from processors.pool import CalcPool, ProcessDied
from processors.retry import RetryPolicy
from processors.sequence import TERMINAL_SEQ, SeqClock
from streams.events import EventType, JobEvent, JobStatus, JobView

PLUGIN = "tests.calc_plugin"
registry.load_plugins([PLUGIN, "tests.calc_plugin_v2"])


# --- seqs -------------------------------------------------------------------------------
def test_seqs_increase_per_job_and_a_later_rerun_never_reuses_them():
    submitted = datetime(2026, 1, 1, tzinfo=UTC)
    first = SeqClock()
    run1 = [first.next("j", submitted, submitted + timedelta(milliseconds=ms)) for ms in (5, 5, 5, 300, 2000)]
    assert run1 == sorted(set(run1)) and run1[0] >= 1
    # the worker died; another one runs the job again 15 s later, with no memory of the first run
    second = SeqClock()
    run2 = [second.next("j", submitted, submitted + timedelta(seconds=15, milliseconds=ms)) for ms in (0, 0, 250)]
    assert run2 == sorted(set(run2)) and min(run2) > max(run1)
    assert max(run2) < TERMINAL_SEQ


def test_a_rerun_after_a_crash_folds_into_one_terminal_state():
    submitted = datetime(2026, 1, 1, tzinfo=UTC)

    def event(seq: int, type_: EventType, **data) -> JobEvent:
        return JobEvent(job_id="j", seq=seq, type=type_, kind="k", data=data, ts=submitted)

    original = [
        event(0, EventType.QUEUED),
        event(3, EventType.RUNNING, attempt=1),
        event(4, EventType.PROGRESS, progress=0.0),
        event(30, EventType.PROGRESS, progress=0.4),
        event(TERMINAL_SEQ, EventType.SUCCEEDED, result={"x": 1}, calc_version="1"),
    ]
    rerun = [
        event(1500, EventType.RUNNING, attempt=1),
        event(1501, EventType.PROGRESS, progress=0.0),
        event(TERMINAL_SEQ, EventType.SUCCEEDED, result={"x": 1}, calc_version="1"),
    ]
    view = JobView.fold(original + rerun)
    assert view is not None and view.status is JobStatus.SUCCEEDED and view.result == {"x": 1}
    assert view.seq == TERMINAL_SEQ and view.progress == 1.0
    terminals = {e.seq for e in original + rerun if e.terminal}
    assert terminals == {TERMINAL_SEQ}  # readers that dedupe by seq see one terminal


# --- retries ----------------------------------------------------------------------------
def test_backoff_is_exponential_jittered_and_capped():
    policy = RetryPolicy(max_attempts=4, base_s=0.2, max_s=1.0)
    rng = random.Random(7)
    for attempt, raw in ((1, 0.2), (2, 0.4), (3, 0.8)):
        delays = [policy.delay_s(attempt, rng) for _ in range(200)]
        assert min(delays) >= raw * 0.5 and max(delays) <= min(raw * 1.5, 1.0)
        assert max(delays) - min(delays) > raw * 0.3  # jitter spreads them
    assert max(policy.delay_s(10, rng) for _ in range(100)) <= 1.0
    assert [policy.should_retry(a) for a in (1, 2, 3, 4)] == [True, True, True, False]


# --- outcome classification (in-process) --------------------------------------------------
def specs(*params: dict) -> list[JobSpec]:
    return [JobSpec(f"j{i}", p) for i, p in enumerate(params)]


def statuses(outcomes) -> list[str]:
    return [o.status for o in outcomes]


def test_bad_params_fail_alone_and_the_rest_of_the_batch_runs():
    outcomes = run_jobs("test.work", specs({"value": 1}, {"value": "x"}, {"value": 3}), NoControl())
    assert statuses(outcomes) == ["succeeded", "failed", "succeeded"]
    assert outcomes[1].error["type"] == "invalid_params" and outcomes[2].result["value"] == 3


def test_a_typed_calculation_error_fails_its_job_and_leaves_the_others_to_run_again():
    outcomes = run_jobs("test.work", specs({"value": 1}, {"reject": True}, {"value": 3}), NoControl())
    assert statuses(outcomes) == ["not_run", "failed", "not_run"]
    assert outcomes[1].error["type"] == "calculation_error"


def test_an_unexpected_error_splits_a_batch_and_is_transient_for_a_job_alone():
    assert statuses(run_jobs("test.work", specs({"value": 1}, {"explode": True}), NoControl())) == ["split"] * 2
    alone = run_jobs("test.work", specs({"explode": True}), NoControl())
    assert statuses(alone) == ["transient"] and alone[0].error["type"] == "internal_error"


def test_transient_errors_and_unknown_kinds(tmp_path):
    counter = str(tmp_path / "count")
    outcomes = run_jobs("test.work", specs({"value": 1}, {"flaky_times": 1, "counter": counter}), NoControl())
    assert statuses(outcomes) == ["not_run", "transient"]
    assert statuses(run_jobs("test.work", specs({"flaky_times": 1, "counter": counter}), NoControl())) == ["succeeded"]
    assert run_jobs("no.such", specs({}), NoControl())[0].error["type"] == "unknown_kind"


def test_cancel_and_timeout_are_honoured_at_progress_points():
    control = NoControl(cancel={"j1"})
    outcomes = run_jobs("test.work", specs({"value": 0}, {"sleep_s": 0.2}), control)
    assert statuses(outcomes) == ["not_run", "cancelled"]
    timed = run_jobs("test.work", [JobSpec("a", {"sleep_s": 5.0, "steps": 50}, timeout_s=0.2)], NoControl())
    assert statuses(timed) == ["timed_out"] and timed[0].error["type"] == "timeout"


def test_progress_is_throttled_and_quick_jobs_report_none():
    control = NoControl()
    run_jobs("test.work", specs({"sleep_s": 1.0, "steps": 100}, {"value": 2}), control)
    reports = [f for job, f in control.reports if job == "j0"]
    assert 2 <= len(reports) <= 6 and reports == sorted(reports)
    assert not [r for r in control.reports if r[0] == "j1"]


def test_stats_results_are_plain_json():
    outcome = run_batch("stats.describe", ["j0"], [{"values": [1, 2, 3]}])[0]
    assert outcome.ok and type(outcome.result["mean"]) is float and outcome.calc_version == "1"


# --- the process pool ------------------------------------------------------------------------
def pool_scenario(coro_fn, size: int = 1, grace_s: float = 0.5):
    async def main():
        reports: list[tuple[str, float]] = []
        pool = await CalcPool(
            size, plugins=[PLUGIN], grace_s=grace_s, on_progress=lambda j, f: reports.append((j, f))
        ).start()
        try:
            return await asyncio.wait_for(coro_fn(pool, reports), 120)
        finally:
            await pool.close()

    return asyncio.run(main())


def test_pool_runs_a_batch_in_another_process_and_forwards_progress():
    async def scenario(pool, reports):
        slot = await pool.acquire()
        outcomes = await pool.run(slot, "test.work", specs({"value": 1, "sleep_s": 0.8, "steps": 8}, {"value": 2}))
        pool.release(slot)
        return outcomes

    import os

    outcomes = []
    reports = []

    async def capture(pool, seen):
        nonlocal outcomes, reports
        outcomes = await scenario(pool, seen)
        reports = list(seen)

    pool_scenario(capture)
    assert statuses(outcomes) == ["succeeded", "succeeded"]
    assert outcomes[0].result["pid"] != os.getpid() and outcomes[0].result["batch_size"] == 2
    assert reports and all(job == "j0" for job, _ in reports)


def test_a_crashing_job_kills_only_its_process_and_the_slot_comes_back():
    async def scenario(pool, reports):
        slot = await pool.acquire()
        with pytest.raises(ProcessDied) as died:
            await pool.run(slot, "test.work", specs({"crash": True}))
        after = await pool.run(slot, "test.work", specs({"value": 5}))
        return died.value.exitcode, after, pool.restarts

    exitcode, after, restarts = pool_scenario(scenario)
    assert exitcode == 13 and statuses(after) == ["succeeded"] and restarts == 1


def test_a_job_hanging_past_its_timeout_gets_its_process_killed():
    async def scenario(pool, reports):
        slot = await pool.acquire()
        started = time.monotonic()
        with pytest.raises(ProcessDied) as died:
            await pool.run(
                slot,
                "test.work",
                [JobSpec("late", {"hang_s": 60}, timeout_s=0.2), JobSpec("ok", {})],
                deadlines={"late": started + 0.2},
            )
        return died.value.timed_out, await pool.run(slot, "test.work", specs({"value": 1}))

    timed_out, after = pool_scenario(scenario)
    assert timed_out == {"late"} and statuses(after) == ["succeeded"]


def test_cancel_reaches_the_running_process():
    async def scenario(pool, reports):
        slot = await pool.acquire()
        run = asyncio.ensure_future(pool.run(slot, "test.work", specs({"sleep_s": 30, "steps": 300}, {"value": 1})))
        deadline = asyncio.get_running_loop().time() + 60
        while "j0" not in pool.running():  # poll until the job is running, with a deadline
            assert asyncio.get_running_loop().time() < deadline, "job never started"
            await asyncio.sleep(0.01)
        assert pool.cancel("j0")
        return await run

    assert statuses(pool_scenario(scenario)) == ["cancelled", "not_run"]


def test_outcome_statuses_are_the_documented_ones():
    assert [s.value for s in OutcomeStatus] == [
        "succeeded",
        "failed",
        "transient",
        "split",
        "cancelled",
        "timed_out",
        "not_run",
    ]


# --- calculation versions ------------------------------------------------------------------
def test_several_versions_of_a_kind_live_side_by_side_and_the_highest_is_current():
    assert registry.versions("test.square") == ["1", "2"]
    assert registry.get("test.square").version == "2"
    assert registry.get("test.square", "1").version == "1"
    assert [c.version for c in registry.kinds() if c.kind == "test.square"] == ["2"]
    with pytest.raises(registry.UnknownVersion):
        registry.get("test.square", "7")


def test_a_batch_runs_the_version_it_asks_for_and_an_unknown_version_fails_it():
    specs = [JobSpec("a", {"x": 6})]
    assert run_jobs("test.square", specs, NoControl(), "1")[0].result == {"y": 37.0}
    newest = run_jobs("test.square", specs, NoControl())[0]
    assert (newest.result, newest.calc_version) == ({"y": 36.0}, "2")
    failed = run_jobs("test.square", specs, NoControl(), "9")[0]
    assert failed.status == "failed" and failed.error["type"] == "unknown_version"


def test_version_order_is_by_meaning_not_text():
    assert max(["9", "10", "2"], key=registry._version_order) == "10"
    assert max(["1.0", "1.0.1", "zzz"], key=registry._version_order) == "1.0.1"  # non-PEP-440 sorts first


def test_a_worker_app_fetches_with_the_cheaper_hand_over(tmp_path):
    """The worker's Faust app runs ``processors.consumer`` (its rebalance and crash behaviour is what
    tests/test_processors.py exercises against the broker)."""
    from processors import consumer
    from processors.app import create_app
    from streams.kafka_config import KafkaConnection
    from streams.settings import Settings

    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1")
    app = create_app(settings, KafkaConnection.from_settings(settings))
    assert type(app.transport) is consumer.Transport and app.transport.Consumer is consumer.Consumer


def test_a_worker_fetch_waits_at_the_broker_as_set_not_faust_s_1500_ms(tmp_path):
    """Faust builds aiokafka's client with a fixed 1,500 ms fetch wait; the worker's is the setting's
    (with small fetches the fixed wait halved single-submit throughput: docs/benchmarks.md)."""
    from processors.app import create_app
    from streams.kafka_config import KafkaConnection
    from streams.settings import Settings

    async def client_wait_ms(wait_ms: int) -> int:
        settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", worker_fetch_wait_ms=wait_ms)
        app = create_app(settings, KafkaConnection.from_settings(settings))
        client = app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)  # type: ignore[attr-defined]
        try:
            return int(client._fetch_max_wait_ms)
        finally:
            await client.stop()  # never started: closes its connection pool

    assert asyncio.run(client_wait_ms(37)) == 37
    assert Settings().worker_fetch_wait_ms == 100


def test_the_copied_fetch_loop_matches_the_pinned_faust():
    """``processors.consumer`` overrides a private Faust method with an edited copy: an upgrade that
    changes the original (or the pin) must be looked at, not silently run with the old copy."""
    import hashlib
    import inspect
    import tomllib
    from pathlib import Path

    import faust
    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.transport.drivers import aiokafka as faust_aiokafka

    from processors import consumer

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    assert [d for d in project["dependencies"] if d.startswith("faust-streaming")] == [
        f"faust-streaming=={consumer.COPIED_FROM}"
    ]
    assert faust.__version__ == consumer.COPIED_FROM
    # the driver's consumer runs the base class's loop: that is the one the copy replaces
    assert faust_aiokafka.Consumer._drain_messages is FaustConsumer._drain_messages
    upstream = inspect.getsource(FaustConsumer._drain_messages)
    assert hashlib.sha256(upstream.encode()).hexdigest() == consumer.UPSTREAM_SHA256
