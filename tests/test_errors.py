"""Every exception jobstream defines derives from ``JobstreamError``; domain errors carry no HTTP status."""

from __future__ import annotations

import importlib
from pathlib import Path

from streams.errors import JobstreamError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = (
    "calculations",
    "edge",
    "store",
    "streams",
    "ingest_api",
    "processors",
    "sse_gateway",
    "sink",
    "replay",
    "jobstream",
)
#: not jobstream's errors: an HTTP answer (raised by routes, rendered as problem details), and a
#: BaseException on purpose so that a calculation's own ``except Exception`` cannot swallow it
EXEMPT = {"edge.problems.Problem", "processors.executor._Stop"}


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub} | _subclasses(sub)
    return found


def test_every_project_exception_is_a_jobstream_error():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    ours = {
        f"{c.__module__}.{c.__qualname__}": c
        for c in _subclasses(BaseException)
        if c.__module__.split(".")[0] in PACKAGES
    }
    assert len(ours) > 20, sorted(ours)
    stray = sorted(name for name, c in ours.items() if name not in EXEMPT and not issubclass(c, JobstreamError))
    assert not stray, stray
    carrying = sorted(
        name
        for name, c in ours.items()
        if name not in EXEMPT
        and not name.startswith("jobstream.client.")
        and "status" in vars(c).get("__init__", lambda: None).__code__.co_varnames
    )
    assert not carrying, carrying
