"""A calculation process's CPU per single-job batch with metrics recorded and not, side by side.

    .venv/bin/python -m bench.calc_metrics_bench [--batches 20000] [--off-first]

Two calculation processes (``processors.executor.child_main``, as the worker's pool starts them),
one started with ``PROMETHEUS_MULTIPROC_DIR`` set (it records: batch run time and size, tallied and
written after a second) and one without (it records nothing); the same single-job
``stats.describe`` batches go to each in turn over their pipes, and each process's CPU time is read
from ``/proc`` before and after. The whole-pipeline bench (``bench.processors_bench --side-by-side``)
showed the calculation processes +7% with recording on; this isolates them from the rest of the
machine's noise. The process started first tends to pay more: ``--off-first`` swaps the order.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
from typing import Any

from processors.executor import child_main


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(conn: Any, i: int) -> None:
    params = {"values": [1.0, 2.0, 3.0, float(i % 100)]}
    conn.send(("run", i, "stats.describe", None, [(f"job-{i}", params, None)]))
    while conn.recv()[0] != "done":  # progress reports, if any, come first
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20000)
    parser.add_argument("--off-first", action="store_true", help="start the process without recording first")
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    directory = tempfile.mkdtemp(prefix="jobstream-calc-metrics-")
    sides: dict[str, tuple[Any, Any]] = {}
    for name in ("off", "on") if args.off_first else ("on", "off"):
        if name == "on":
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
        else:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        parent, child = ctx.Pipe(duplex=True)
        process = ctx.Process(target=child_main, args=(child, [], os.getpid()), daemon=True)
        process.start()
        child.close()
        assert parent.recv()[0] == "ready"
        sides[name] = (process, parent)
    for _, conn in sides.values():  # warm-up: imports, numpy's first calls
        for i in range(500):
            _run(conn, i)
    before = {name: _cpu_s(process.pid) for name, (process, _) in sides.items()}
    for i in range(args.batches):
        for name in ("on", "off") if i % 2 else ("off", "on"):
            _run(sides[name][1], i)
    after = {name: _cpu_s(process.pid) for name, (process, _) in sides.items()}
    us = {name: (after[name] - before[name]) / args.batches * 1e6 for name in sides}
    print(f"{args.batches:,} single-job batches each, started first: {next(iter(sides))}")
    print(f"calculation process CPU µs per batch: recording {us['on']:.1f}, not recording {us['off']:.1f}")
    print(f"on/off: {us['on'] / us['off']:.3f}")
    for _, conn in sides.values():
        conn.close()


if __name__ == "__main__":
    main()
