"""Which partition of ``jobs.requested`` a request goes to: the one partitioner every producer of requests uses.

A tenant's jobs spread over ``JOBSTREAM_TENANT_PARTITIONS`` neighbouring partitions (from a hash of the
tenant, then of the job id), so one tenant's burst fills a few partitions and the others stay free for the
other tenants; a worker pauses a full partition and keeps reading the rest (``processors.runner``). Jobs of
priority ``HIGH_PRIORITY`` or more go to the last ``JOBSTREAM_PRIORITY_PARTITIONS`` partitions (the
priority lane), which no backlog of ordinary jobs stands in front of. The partition count is
``JOBSTREAM_REQUESTED_PARTITIONS``: it must not exceed the topic's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from streams.settings import Settings

HIGH_PRIORITY = 5  #: jobs at this priority or above take the priority lane (and never wait for a batch to fill)


@dataclass(frozen=True, slots=True)
class RequestPartitioner:
    partitions: int  #: partitions of jobs.requested
    tenant_partitions: int  #: how many of them one tenant's ordinary jobs use
    lane: int  #: partitions at the end kept for high-priority jobs (0: no lane)

    @classmethod
    def from_settings(cls, settings: Settings) -> RequestPartitioner:
        return cls.of(settings.requested_partitions, settings.tenant_partitions, settings.priority_partitions)

    @classmethod
    def of(cls, partitions: int, tenant_partitions: int, priority_partitions: int) -> RequestPartitioner:
        """A lane is kept only when at least one ordinary partition is left beside it."""
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        lane = min(priority_partitions, partitions - 1)
        return cls(partitions, max(1, min(tenant_partitions, partitions - lane)), max(0, lane))

    @property
    def ordinary(self) -> int:
        return self.partitions - self.lane

    def tenant_home(self, tenant: str) -> list[int]:
        """The partitions a tenant's ordinary jobs go to."""
        start = zlib.crc32(tenant.encode()) % self.ordinary
        return [(start + i) % self.ordinary for i in range(self.tenant_partitions)]

    def partition(self, tenant: str, job_id: str, priority: int) -> int:
        """The request's partition: stable for a job (a re-sent request lands where the first one did)."""
        spread = zlib.crc32(job_id.encode())
        if priority >= HIGH_PRIORITY and self.lane:
            return self.ordinary + spread % self.lane
        start = zlib.crc32(tenant.encode()) % self.ordinary
        return (start + spread % self.tenant_partitions) % self.ordinary

    def is_lane(self, partition: int) -> bool:
        return partition >= self.ordinary
