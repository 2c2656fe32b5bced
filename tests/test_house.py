"""The house rule, read from the import graph: service packages never import each other; the
shared packages below them import no service and not the top (``jobstream``). Test code too:
test modules share helpers through ``tests/support`` only, and ``bench/`` imports no tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = frozenset(
    {"ingest_api", "processors", "sse_gateway", "sink", "replay", "notifier", "dead_letters", "console"}
)
SHARED = frozenset({"edge", "calculations", "store", "streams", "telemetry"})
TOP = "jobstream"


def imports(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (relative imports stay inside their package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_of(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(SERVICES))
def test_a_service_imports_only_shared_packages(package: str):
    crossing = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of(package)
        for name in imports(path)
        if name.split(".")[0] in (SERVICES | {TOP}) - {package}
    }
    assert not crossing, sorted(crossing)


@pytest.mark.parametrize("package", sorted(SHARED))
def test_a_shared_package_imports_no_service(package: str):
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of(package)
        for name in imports(path)
        if name.split(".")[0] in SERVICES | {TOP}
    }
    assert not upward, sorted(upward)


def test_every_package_is_in_a_layer():
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages - {"bench", "tests"} <= SERVICES | SHARED | {TOP}, packages


def test_bench_imports_no_tests():
    """Benches stand on the product (and bench/ helpers), never on test code."""
    into_tests = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of("bench")
        for name in imports(path)
        if name.split(".")[0] == "tests"
    }
    assert not into_tests, sorted(into_tests)


def test_no_test_module_imports_another():
    """Shared test helpers live in tests/support; test modules and conftest are not libraries."""

    def is_test_module(name: str) -> bool:
        parts = name.split(".")
        return parts[0] == "tests" and len(parts) > 1 and (parts[1].startswith("test_") or parts[1] == "conftest")

    crossing = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in modules_of("tests")
        for name in imports(path)
        if is_test_module(name)
    }
    assert not crossing, sorted(crossing)
