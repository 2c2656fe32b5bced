"""The requests' partitioner: tenants on a few partitions each, high priority on the lane, stable per job."""

from __future__ import annotations

import pytest

from streams import wire
from streams.events import new_job_id
from streams.partitioning import HIGH_PRIORITY, RequestPartitioner
from streams.settings import Settings
from streams.topics import JobTopics


def test_a_tenants_ordinary_jobs_stay_on_its_home_partitions_and_spread_over_them():
    partitioner = RequestPartitioner.of(12, 3, 2)
    home = partitioner.tenant_home("acme")
    assert len(set(home)) == 3 and all(p < 10 for p in home)
    used = {partitioner.partition("acme", new_job_id(), 0) for _ in range(300)}
    assert used == set(home)


def test_high_priority_jobs_take_the_lane_and_ordinary_jobs_never_do():
    partitioner = RequestPartitioner.of(6, 2, 1)
    assert {partitioner.partition(f"t{i}", new_job_id(), HIGH_PRIORITY) for i in range(50)} == {5}
    assert {partitioner.partition(f"t{i}", new_job_id(), HIGH_PRIORITY - 1) for i in range(200)} <= set(range(5))
    assert partitioner.is_lane(5) and not partitioner.is_lane(4)


def test_a_job_lands_on_the_same_partition_every_time():
    partitioner = RequestPartitioner.of(6, 2, 1)
    job_id = new_job_id()
    assert len({partitioner.partition("acme", job_id, 0) for _ in range(10)}) == 1


@pytest.mark.parametrize(
    ("partitions", "tenant", "lane", "expected"),
    [(1, 2, 1, (1, 0)), (2, 5, 1, (1, 1)), (4, 10, 0, (4, 0)), (4, 2, 9, (1, 3))],
)
def test_one_partition_stays_ordinary_and_a_tenant_spreads_over_at_most_the_ordinary_ones(
    partitions: int, tenant: int, lane: int, expected: tuple[int, int]
):
    partitioner = RequestPartitioner.of(partitions, tenant, lane)
    assert (partitioner.tenant_partitions, partitioner.lane) == expected
    assert all(0 <= partitioner.partition("t", new_job_id(), p) < partitions for p in (0, 9))


def test_every_producer_of_requests_goes_through_the_partitioner_of_the_settings():
    settings = Settings(requested_partitions=8, tenant_partitions=2, priority_partitions=2)
    job_topics = JobTopics.from_settings(settings)
    job = wire.build(new_job_id(), "acme", "stats.describe", {"values": [1.0]}, 9, None)
    request, queued = wire.records(job, job_topics)
    assert request.partition in (6, 7) and queued.partition == -1  # events stay keyed by job id
    ordinary = wire.build(new_job_id(), "acme", "stats.describe", {"values": [1.0]}, 0, None)
    assert wire.records(ordinary, job_topics)[0].partition in job_topics.partitioner.tenant_home("acme")
