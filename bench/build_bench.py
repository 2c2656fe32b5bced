"""``streams.wire.build`` per job: a submit's encoding of its request and queued event, in CPU time.

    .venv/bin/python -m bench.build_bench [LABEL]

CPU time (``time.process_time``), not wall time, so a loaded machine changes the figures less; the
median and the minimum of 15 rounds, for 4 and for 1,000 params values. Run it with another
checkout's interpreter from that checkout for a baseline (``cd DIR && .venv/bin/python -m bench.build_bench base``).
"""

from __future__ import annotations

import statistics
import sys
import time
import timeit

from streams.wire import build

CASES = (
    ("4 values", {"values": [1.0, 2.0, 3.0, 4.0]}, 20_000),
    ("1,000 values", {"values": [float(i) for i in range(1000)]}, 2_000),
)


def main() -> None:
    label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
    for name, params, number in CASES:
        timer = timeit.Timer(
            lambda params=params: build("0" * 32, "default", "stats.describe", params, 0, None), timer=time.process_time
        )
        runs = [timer.timeit(number=number) / number for _ in range(15)]
        print(f"{label} {name}: median {statistics.median(runs) * 1e6:.2f} us/job, min {min(runs) * 1e6:.2f}")


if __name__ == "__main__":
    main()
