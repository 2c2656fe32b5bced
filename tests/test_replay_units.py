"""Replay logic without services: which scanned requests a selection picks, ids, times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from replay.models import ReplaySelection, replayed_job_id
from replay.select import Filter, Found, chunks
from streams.events import JobRequested

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def found(
    job_id: str, *, tenant: str = "acme", kind: str = "stats.describe", at_s: float = 0.0, replay_of: str | None = None
) -> Found:
    request = JobRequested(
        job_id=job_id, tenant=tenant, kind=kind, params={}, ts=T0 + timedelta(seconds=at_s), replay_of=replay_of
    )
    return Found(0, 0, request)


def picks(selection: ReplaySelection, items: list[Found], statuses: dict[str, str] | None = None) -> list[str]:
    flt = Filter("acme", selection, (lambda tenant, ids: statuses or {}) if statuses is not None else None)
    return [f.request.job_id for f in flt.by_status([f for f in items if flt.candidate(f)])]


def test_time_range_is_half_open_to_the_millisecond():
    items = [found("before", at_s=-0.001), found("first", at_s=0), found("last", at_s=9.999), found("after", at_s=10)]
    assert picks(ReplaySelection(since=T0, until=T0 + timedelta(seconds=10)), items) == ["first", "last"]


def test_only_the_callers_tenant_and_never_a_rerun_unless_named():
    items = [found("mine"), found("theirs", tenant="other"), found("rerun", replay_of="mine")]
    assert picks(ReplaySelection(), items) == ["mine"]
    assert picks(ReplaySelection(job_ids=["rerun", "theirs"]), items) == ["rerun"]


def test_kind_and_status_filters_narrow():
    items = [found("a"), found("b", kind="linear.fit"), found("c")]
    assert picks(ReplaySelection(kinds=["stats.describe"]), items) == ["a", "c"]
    statuses = {"a": "failed", "b": "failed", "c": "succeeded"}
    assert picks(ReplaySelection(statuses=["failed"]), items, statuses) == ["a", "b"]
    assert picks(ReplaySelection(statuses=["failed"]), [found("unknown")], statuses) == []  # not in the store yet
    with pytest.raises(ValueError):
        Filter("acme", ReplaySelection(statuses=["failed"]), None)


def test_replayed_ids_are_stable_per_replay_and_distinct_across_replays():
    assert replayed_job_id("r1", "j") == replayed_job_id("r1", "j")
    assert len({replayed_job_id("r1", "j"), replayed_job_id("r2", "j"), replayed_job_id("r1", "k")}) == 3


def test_selection_refuses_an_empty_range_and_chunks_keep_order():
    with pytest.raises(ValidationError):
        ReplaySelection(since=T0, until=T0)
    assert [len(c) for c in chunks(range(7), 3)] == [3, 3, 1]
    assert [x for c in chunks(range(7), 3) for x in c] == list(range(7))
