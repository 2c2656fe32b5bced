"""A real Prometheus server (Debian's ``prometheus`` package, `make prometheus`) and the metric names
jobstream exports, for the dashboard, alert-rule and scrape tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import yaml

from tests.support import ROOT
from tests.support.service_process import listening_ports
from tests.support.waiting import wait_until

ALERTS = ROOT / "docker" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "docker" / "prometheus" / "alerts.test.yml"
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "jobstream.json"

_NAME = re.compile(r"\bjobstream_[a-z0-9_]+\b")
_SAMPLE_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")  # label values may hold braces


def binary(name: str) -> str:
    """Path of ``promtool``/``prometheus``; fails (never skips) with how to install them."""
    found = shutil.which(name)
    assert found, f"{name} is not installed: run `make prometheus` (Debian package 'prometheus')"
    return found


def exported_sample_names() -> dict[str, str]:
    """Every sample name the code can export (``_total``, ``_bucket``, ``_sum``, ``_count`` included) → its family."""
    from prometheus_client import Counter, Gauge, Histogram

    from telemetry import metrics

    names: dict[str, str] = {}
    for value in vars(metrics).values():
        if isinstance(value, Counter):
            names[f"{value._name}_total"] = f"{value._name}_total"
        elif isinstance(value, Histogram):
            for suffix in ("_bucket", "_sum", "_count"):
                names[value._name + suffix] = value._name
        elif isinstance(value, Gauge):
            names[value._name] = value._name
    return names


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target]


def names_in(expr: str) -> set[str]:
    return set(_NAME.findall(expr))


def samples(text: str) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE_LINE.match(line)
        if match and not line.startswith("#"):
            found.append((match.group(1), match.group(2) or "", float(match.group(3))))
    return found


class PrometheusServer:
    """``prometheus`` scraping ``targets`` every second, on a port it picks; ``query`` answers PromQL."""

    def __init__(self, home: Path, targets: list[str]) -> None:
        self.home = home
        self.config = home / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [{"job_name": "jobstream", "static_configs": [{"targets": targets}]}],
                }
            )
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> PrometheusServer:
        self.log = open(self.home / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [
                binary("prometheus"),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.home / 'data'}",
                "--web.listen-address=127.0.0.1:0",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        port = wait_until(lambda: self._exited() or next(iter(listening_ports(self.process.pid)), None), 60)
        self.url = f"http://127.0.0.1:{port}"
        wait_until(self._ready, 60, 0.1, message="prometheus to be ready")
        return self

    def _exited(self) -> None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.home / 'prometheus.log').read_text()[-3000:]}")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def query(self, promql: str) -> list[dict]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        return response.json()["data"]["result"]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
