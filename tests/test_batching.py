"""Adaptive batching, as pure logic: the policy's decisions and the batcher's grouping and order."""

from __future__ import annotations

import asyncio

import pytest

from processors.batching import HIGH_PRIORITY, Batcher, BatchPolicy, Plan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = BatchPolicy(max_size=64, max_wait_s=0.05, latency_target_s=0.5)


def test_an_idle_worker_runs_a_lone_job_at_once():
    plan = POLICY.plan(waiting=1, oldest_wait_s=0.0, arrival_rate=0.5, cost_per_job_s=None)
    assert plan == Plan(64, 0.0)


def test_under_load_it_waits_to_fill_but_never_past_the_window():
    plan = POLICY.plan(waiting=4, oldest_wait_s=0.01, arrival_rate=1000.0, cost_per_job_s=0.0001)
    assert plan.size == 64
    assert 0 < plan.wait_s <= 0.04 + 1e-9  # (64-4)/1000 = 60 ms to fill, but only 40 ms of window left
    plan = POLICY.plan(waiting=60, oldest_wait_s=0.0, arrival_rate=1000.0, cost_per_job_s=0.0001)
    assert plan.wait_s == pytest.approx(0.004)  # four more jobs expected in 4 ms


def test_a_full_group_goes_now():
    assert POLICY.plan(waiting=500, oldest_wait_s=0.0, arrival_rate=1e4, cost_per_job_s=None) == Plan(64, 0.0)


def test_batch_size_is_capped_so_a_batch_runs_within_half_the_latency_target():
    # 50 ms per job and a 500 ms target: at most 5 jobs per batch, whatever the configured maximum.
    assert POLICY.size_cap(0.05) == 5
    assert POLICY.size_cap(10.0) == 1
    assert POLICY.size_cap(1e-6) == 64
    plan = POLICY.plan(waiting=30, oldest_wait_s=0.0, arrival_rate=1e4, cost_per_job_s=0.05)
    assert plan == Plan(5, 0.0)


def test_waiting_never_spends_the_latency_budget():
    policy = BatchPolicy(max_size=64, max_wait_s=1.0, latency_target_s=0.2)
    plan = policy.plan(waiting=2, oldest_wait_s=0.05, arrival_rate=100.0, cost_per_job_s=0.001)
    # budget: 0.2 - 0.05 waited - 0.064 expected run = 0.086 s
    assert 0 < plan.wait_s <= 0.086 + 1e-9


def test_high_priority_never_waits_for_a_batch_to_fill():
    plan = POLICY.plan(waiting=1, oldest_wait_s=0.0, arrival_rate=1e4, cost_per_job_s=None, top_priority=HIGH_PRIORITY)
    assert plan.wait_s == 0.0


def test_batch_max_size_one_turns_batching_off():
    policy = BatchPolicy(max_size=1, max_wait_s=0.05, latency_target_s=0.5)
    assert policy.plan(waiting=100, oldest_wait_s=0.0, arrival_rate=1e4, cost_per_job_s=0.0001) == Plan(1, 0.0)


def run(coro):
    return asyncio.run(coro)


def test_batches_group_by_kind_and_key_and_order_by_priority_then_arrival():
    async def scenario():
        clock = Clock()
        batcher: Batcher[str] = Batcher(BatchPolicy(max_size=10, max_wait_s=0.0, latency_target_s=1.0), clock)
        batcher.add("a1", ("a", None), 0)
        clock.now += 0.001
        batcher.add("b1", ("b", None), 0)
        batcher.add("a2", ("a", None), 3)
        batcher.add("a3", ("a", None), 0)
        first = await batcher.next_batch()
        second = await batcher.next_batch()
        return first, second, len(batcher)

    first, second, left = run(scenario())
    assert first == (("a", None), ["a2", "a1", "a3"])  # the best job's group, priority first, then arrival
    assert second == (("b", None), ["b1"])
    assert left == 0


def test_a_high_priority_job_goes_before_a_large_low_priority_backlog():
    async def scenario():
        batcher: Batcher[str] = Batcher(BatchPolicy(max_size=4, max_wait_s=0.05, latency_target_s=1.0), Clock())
        for i in range(20):
            batcher.add(f"low{i}", ("k", None), 0)
        batcher.add("urgent", ("k", None), 9)
        return await batcher.next_batch()

    _, batch = run(scenario())
    assert batch == ["urgent", "low0", "low1", "low2"]


def test_a_lone_job_is_not_held_for_the_window_when_idle():
    async def scenario():
        batcher: Batcher[str] = Batcher(BatchPolicy(max_size=64, max_wait_s=600.0, latency_target_s=1200.0))
        batcher.add("only", ("k", None))
        return await asyncio.wait_for(batcher.next_batch(), timeout=60)  # not the 600 s window

    assert run(scenario()) == (("k", None), ["only"])


def test_under_a_burst_the_batch_takes_what_arrived():
    async def scenario():
        batcher: Batcher[int] = Batcher(BatchPolicy(max_size=64, max_wait_s=0.05, latency_target_s=0.5))
        for i in range(200):
            batcher.add(i, ("k", None))
        sizes = []
        while len(batcher):
            _, batch = await batcher.next_batch()
            sizes.append(len(batch))
        return sizes

    assert run(scenario()) == [64, 64, 64, 8]


def test_retry_delay_holds_a_job_back_until_it_is_due():
    async def scenario():
        clock = Clock()
        batcher: Batcher[str] = Batcher(POLICY, clock)
        batcher.add("later", ("k", None), delay_s=5.0, count_arrival=False)
        task = asyncio.ensure_future(batcher.next_batch())
        for _ in range(20):  # let the batcher run until it waits on the (fake) clock
            await asyncio.sleep(0)
        early = task.done()
        clock.now += 5.0
        batcher.add("now", ("k", None), count_arrival=False)  # wakes the batcher
        return early, await asyncio.wait_for(task, 10)

    early, (_, batch) = run(scenario())
    assert not early
    assert sorted(batch) == ["later", "now"]


def test_cancelled_jobs_are_removed_and_clear_drops_everything():
    async def scenario():
        batcher: Batcher[str] = Batcher(POLICY, Clock())
        for name in ("a", "b", "c"):
            batcher.add(name, ("k", None))
        batcher.add("d", ("k", None), delay_s=10.0)
        removed = batcher.remove_where(lambda item: item in {"b", "d"})
        size_after_remove = len(batcher)
        _, batch = await batcher.next_batch()
        batcher.add("e", ("k", None))
        batcher.add("f", ("j", None), delay_s=1.0)
        dropped = batcher.clear()
        return removed, size_after_remove, batch, sorted(dropped), len(batcher)

    removed, size, batch, dropped, left = run(scenario())
    assert sorted(removed) == ["b", "d"] and size == 2
    assert batch == ["a", "c"]
    assert dropped == ["e", "f"] and left == 0


def test_observed_costs_shrink_batches_of_slow_kinds():
    async def scenario():
        batcher: Batcher[int] = Batcher(BatchPolicy(max_size=64, max_wait_s=0.05, latency_target_s=0.5), Clock())
        batcher.observe(("slow", None), 2, 0.2)  # 100 ms per job → at most 2 per batch
        for i in range(10):
            batcher.add(i, ("slow", None))
        _, batch = await batcher.next_batch()
        return batch

    assert run(scenario()) == [0, 1]


def test_arrival_rate_decays_when_arrivals_stop():
    clock = Clock()
    batcher: Batcher[int] = Batcher(POLICY, clock)
    for i in range(100):
        batcher.add(i, ("k", None))
    busy = batcher.arrival_rate()
    clock.now += 10.0
    assert busy > 50 and batcher.arrival_rate() < 0.01


def test_with_another_process_free_a_job_never_waits():
    plan = POLICY.plan(waiting=1, oldest_wait_s=0.0, arrival_rate=1000.0, cost_per_job_s=0.0001, idle_slots=2)
    assert plan.wait_s == 0.0
    assert (
        POLICY.plan(waiting=1, oldest_wait_s=0.0, arrival_rate=1000.0, cost_per_job_s=0.0001, idle_slots=1).wait_s > 0
    )


# --- fair queueing between tenants, and ageing -----------------------------------------------------
def one_at_a_time(clock: Clock, ageing_s: float = float("inf")) -> Batcher[str]:
    return Batcher(BatchPolicy(max_size=1, max_wait_s=0.05, latency_target_s=0.5), clock, ageing_s=ageing_s)


def drain(batcher: Batcher[str], count: int) -> list[str]:
    taken = []
    for _ in range(count):
        plan = batcher._try_plan()
        assert isinstance(plan, tuple), plan
        taken.extend(plan[1])
    return taken


def test_a_new_tenants_job_goes_before_another_tenants_backlog():
    clock = Clock()
    batcher = one_at_a_time(clock)
    for i in range(100):
        batcher.add(f"a{i}", "g", tenant="a")
    assert drain(batcher, 3) == ["a0", "a1", "a2"]
    batcher.add("b0", "g", tenant="b")
    assert drain(batcher, 2) == ["b0", "a3"]  # b starts at the virtual time of the job last taken


def test_backlogged_tenants_share_by_weight():
    clock = Clock()
    batcher = one_at_a_time(clock)
    for i in range(300):
        batcher.add(f"a{i}", "g", tenant="a", weight=2.0)
        batcher.add(f"b{i}", "g", tenant="b", weight=1.0)
    taken = drain(batcher, 150)
    assert sum(t.startswith("a") for t in taken) == pytest.approx(100, abs=2)


def test_priority_still_comes_before_fair_share():
    clock = Clock()
    batcher = one_at_a_time(clock)
    for i in range(10):
        batcher.add(f"a{i}", "g", tenant="a")
    batcher.add("urgent", "g", priority=9, tenant="a")
    batcher.add("b0", "g", tenant="b")
    assert drain(batcher, 2) == ["urgent", "a0"]


def test_a_low_priority_job_runs_once_aged_under_a_steady_higher_priority_stream():
    clock = Clock()
    batcher = one_at_a_time(clock, ageing_s=5.0)
    batcher.add("low", "g", priority=0, tenant="a")
    ran_at = None
    for step in range(100):  # two high-priority jobs arrive per job run: the worker never catches up
        batcher.add(f"h{2 * step}", "g", priority=9, tenant="b")
        batcher.add(f"h{2 * step + 1}", "g", priority=9, tenant="b")
        if drain(batcher, 1) == ["low"]:
            ran_at = clock.now - 1000.0
            break
        clock.now += 0.1
    assert ran_at is not None and 5.0 <= ran_at < 5.2


def test_a_retry_is_not_charged_again():
    clock = Clock()
    batcher = one_at_a_time(clock)
    for i in range(5):
        batcher.add(f"a{i}", "g", tenant="a")
    assert drain(batcher, 1) == ["a0"]
    batcher.add("a0", "g", tenant="a", count_arrival=False)
    batcher.add("b0", "g", tenant="b")
    assert drain(batcher, 3) == ["a0", "b0", "a1"]  # a0 back at the virtual time, b0 there too (later), a1 after
