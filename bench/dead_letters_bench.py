"""How long a page of ``GET /v1/dead-letters`` costs the API's event loop, at the index's bound.

A page is read from the index (``dead_letters.book.DeadLetterIndex``) on the loop, under its lock:
it must cost the same for a tenant with one dead letter among ``JOBSTREAM_DEAD_LETTERS_MAX_KEPT``
as for an operator. No Kafka: this measures the index alone.

    .venv/bin/python -m bench.dead_letters_bench [--entries 100000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime, timedelta

from dead_letters.book import DeadLetter, DeadLetterIndex


def _entries(n: int) -> list[DeadLetter]:
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    return [
        DeadLetter(
            id=f"0-{i}",
            partition=0,
            offset=i,
            job_id=f"{i:032x}",
            tenant="lonely" if i == 0 else f"t{i % 100}",
            kind="stats.describe",
            reason="crashed",
            error="the calculation process died (exit code -9), crash 2",
            source={"partition": i % 6, "offset": i},
            created_at=t0 + timedelta(milliseconds=i),
        )
        for i in range(n)
    ]


def _ms(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    entries = _entries(args.entries)
    index = DeadLetterIndex(args.entries)
    started = time.perf_counter()
    for entry in entries:
        index.add(entry)
    print(f"index {args.entries} entries: {(time.perf_counter() - started) * 1000:.0f} ms (start-up, off the loop)")
    cursor = index.page(50, None)[1]
    cases = {
        "operator, 50 newest": lambda: index.page(50, None),
        "operator, the next 50 (cursor)": lambda: index.page(50, cursor),
        "tenant with 1% of them, 50 newest": lambda: index.page(50, None, "t7"),
        "tenant whose only one is the oldest": lambda: index.page(50, None, "lonely"),
    }
    for name, page in cases.items():
        print(f"{name}: {_ms(page, args.repeat):.3f} ms (best of {args.repeat})")


if __name__ == "__main__":
    main()
