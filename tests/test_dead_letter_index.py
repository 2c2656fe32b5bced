"""The in-memory index behind ``GET /v1/dead-letters`` (``dead_letters.book``): order, paging, the bound,
ids and cursors — pure logic, no broker."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from dead_letters.book import BadCursor, DeadLetter, DeadLetterIndex, decode_cursor, encode_cursor, entry_of, parse_id
from streams.dead_letters import Source, load, record

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def letter(offset: int, tenant: str | None = "a", seconds: float | None = None, partition: int = 0) -> DeadLetter:
    return DeadLetter(
        id=f"{partition}-{offset}",
        partition=partition,
        offset=offset,
        job_id=f"job{offset}",
        tenant=tenant,
        kind="stats.describe",
        reason="crashed",
        error="boom",
        source={"partition": 1, "offset": offset},
        created_at=T0 + timedelta(seconds=offset if seconds is None else seconds),
    )


def test_pages_are_newest_first_filtered_and_stable_while_new_ones_arrive():
    index = DeadLetterIndex(max_kept=100)
    for offset in range(10):
        index.add(letter(offset, tenant="a" if offset % 2 else "b"))
    first, cursor = index.page(2, None, "a")
    assert [e.offset for e in first] == [9, 7] and cursor is not None
    index.add(letter(11, tenant="a"))  # arrives between two pages: it does not shift the next one
    second, cursor = index.page(2, cursor, "a")
    assert [e.offset for e in second] == [5, 3]
    last, cursor = index.page(2, cursor, "a")
    assert [e.offset for e in last] == [1] and cursor is None
    exact, cursor = index.page(11, None)
    assert len(exact) == 11 and cursor is None
    assert index.page(5, None, "nobody") == ([], None)


def test_order_is_by_time_then_partition_and_offset_and_duplicates_are_ignored():
    index = DeadLetterIndex(max_kept=100)
    index.add(letter(5, seconds=1, partition=1))
    index.add(letter(3, seconds=1, partition=0))
    index.add(letter(1, seconds=2, partition=0))
    index.add(letter(1, seconds=2, partition=0))  # read again (a reader restarted): one entry
    assert [e.id for e in index.page(10, None)[0]] == ["0-1", "1-5", "0-3"]
    assert len(index) == 3


def test_the_oldest_are_forgotten_past_max_kept():
    index = DeadLetterIndex(max_kept=3)
    for offset in range(5):
        index.add(letter(offset, tenant="a" if offset < 2 else "b"))
    assert index.get("0-0") is None and index.get("0-1") is None
    assert [e.offset for e in index.page(10, None)[0]] == [4, 3, 2]
    assert index.page(10, None, "a") == ([], None) and [e.offset for e in index.page(10, None, "b")[0]] == [4, 3, 2]


@pytest.mark.parametrize(
    "value, parsed",
    [("0-17", (0, 17)), ("12-0", (12, 0)), ("-", None), ("0-", None), ("a-1", None), ("١-٢", None), ("0-1-2", None)],
)
def test_ids_are_partition_dash_offset(value: str, parsed: tuple[int, int] | None):
    assert parse_id(value) == parsed


@pytest.mark.parametrize(
    "cursor",
    ["", "!!", "ünï", base64.urlsafe_b64encode(b"[1,2]").decode(), base64.urlsafe_b64encode(b'["a",0,0]').decode()],
)
def test_a_cursor_this_api_did_not_make_is_refused(cursor: str):
    with pytest.raises(BadCursor):
        decode_cursor(cursor)


def test_a_cursor_round_trips():
    assert decode_cursor(encode_cursor((1, 2, 3))) == (1, 2, 3)


def test_an_entry_from_a_record_and_from_an_older_record_without_a_kind():
    value = record(
        b'{"kind": "linear.fit"}', reason="undecodable", error="bad", tenant="t", source=Source("jobs.requested", 2, 40)
    )
    entry = entry_of(0, 7, load(value))
    assert (entry.id, entry.kind, entry.tenant, entry.job_id) == ("0-7", "linear.fit", "t", None)
    assert entry.source == {"partition": 2, "offset": 40} and entry.created_at.tzinfo is not None
    with pytest.raises(ValueError):
        load(b'{"reason": "x"}')


def test_redriven_marks_filter_pages_count_each_job_once_and_a_redrive_record_reads_back():
    from streams.dead_letters import load_redrive, redrive_record

    index = DeadLetterIndex(max_kept=100)
    for offset in range(6):
        index.add(letter(offset))
    index.mark("0-4", "new-a", T0)
    index.mark("0-4", "new-a", T0 + timedelta(seconds=5))  # the same re-drive read back: counted once
    index.mark("0-1", "new-b", T0)
    index.mark("0-4", "new-c", T0 + timedelta(seconds=9))
    assert index.redrive_of("0-4").job_ids == ("new-a", "new-c")  # type: ignore[union-attr]
    assert index.redrive_of("0-4").at == T0 + timedelta(seconds=9)  # type: ignore[union-attr]
    done, cursor = index.page(1, None, "a", redriven=True)
    assert [e.offset for e in done] == [4] and cursor is not None
    done, cursor = index.page(1, cursor, "a", redriven=True)
    assert [e.offset for e in done] == [1] and cursor is None
    still, _ = index.page(10, None, redriven=False)
    assert [e.offset for e in still] == [5, 3, 2, 0]
    index.unmark("0-1", "new-b")
    assert index.redrive_of("0-1") is None and len(index.page(10, None, redriven=False)[0]) == 5
    raw = redrive_record(dead_letter_id="0-4", job_id="j", tenant="a", by="ops", idempotency_key="k", fingerprint="f")
    assert load_redrive(raw)["idempotency_key"] == "k"
    with pytest.raises(ValueError):
        load(raw)  # not a dead letter: the book tells the two apart
    with pytest.raises(ValueError):
        load_redrive(record(b"x", reason="crashed", error="e"))
