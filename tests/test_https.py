"""HTTPS: ``jobstream serve`` with JOBSTREAM_TLS_CERTFILE/KEYFILE (a certificate from a CA made for the
test), and the CLI and the Python client trusting that CA through JOBSTREAM_CA_FILE."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.sync.client import connect as ws_connect

from jobstream.client import api_client, watch_job
from streams.certs import LocalCA
from streams.settings import Settings
from tests.support import ROOT
from tests.support.service_process import ServiceProcess, service_env
from tests.support.workers import PLUGIN, Worker, isolated

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("https-ca"))


@pytest.fixture(scope="module")
def served(settings: Settings, ca: LocalCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    scoped = isolated(settings)
    issued = ca.issue("jobstream-api", ["127.0.0.1", "localhost"])
    home = tmp_path_factory.mktemp("https")
    worker = Worker(scoped).start()
    env = service_env(
        scoped.kafka_bootstrap or "", scoped.topic_prefix, home, plugins=PLUGIN, tls_certfile=str(issued.cert)
    )
    env["JOBSTREAM_TLS_KEYFILE"] = str(issued.key)
    serve = ServiceProcess(
        ["serve", "--log-level", "warning"],
        env,
        home / "serve.log",
        verify=ssl.create_default_context(cafile=ca.cert_path),
    )
    try:
        yield serve.start()
    finally:
        serve.stop()
        worker.stop()


def cli(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", *args],
        cwd=ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_submits_over_https_trusting_the_ca_file_and_the_client_follows_the_sse_stream(
    served: ServiceProcess, ca: LocalCA
):
    assert served.url.startswith("https://")
    submitted = cli(
        ["submit", "test.work", '{"value": 7, "sleep_s": 0.3, "steps": 3}', "--json"],
        JOBSTREAM_URL=served.url,
        JOBSTREAM_CA_FILE=str(ca.cert_path),
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = orjson.loads(submitted.stdout)["job_id"]

    with api_client(served.url, None, ca_file=ca.cert_path) as client:  # the Python client, over TLS
        events = list(watch_job(served.url, job_id, client=client))
    assert events[0].type == "queued" and events[-1].type == "succeeded"
    assert "progress" in [e.type for e in events] and events[-1].data["data"]["result"]["value"] == 7

    watched = cli(["watch", job_id], JOBSTREAM_URL=served.url, JOBSTREAM_CA_FILE=str(ca.cert_path))
    assert watched.returncode == 0 and "succeeded" in watched.stdout, watched.stderr


def test_without_the_ca_the_certificate_is_refused_and_plain_http_gets_no_answer(
    served: ServiceProcess, tmp_path: Path
):
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        with api_client(served.url, None, ca_file=LocalCA(tmp_path / "other").cert_path) as client:
            client.get("/healthz")
    refused = cli(["submit", "test.work", "{}"], JOBSTREAM_URL=served.url, JOBSTREAM_CA_FILE="")
    assert refused.returncode == 2 and "CERTIFICATE_VERIFY_FAILED" in refused.stderr  # 2: a connection error
    with pytest.raises(httpx.TransportError):  # the port speaks TLS only
        httpx.get(served.url.replace("https://", "http://") + "/healthz", timeout=5)


def test_api_keys_over_plain_http_on_a_reachable_address_are_warned_about(capsys: pytest.CaptureFixture[str]):
    from jobstream.cli import _warn_keys_in_clear

    _warn_keys_in_clear(Settings(host="10.1.2.3", api_keys="t=k"))
    assert "keys and results travel in clear" in capsys.readouterr().err
    for quiet in (
        Settings(host="127.0.0.1", api_keys="t=k"),  # loopback
        Settings(host="10.1.2.3"),  # no keys (and refused elsewhere)
        Settings(host="10.1.2.3", api_keys="t=k", tls_certfile=Path("c.pem"), tls_keyfile=Path("k.pem")),
    ):
        _warn_keys_in_clear(quiet)
        assert capsys.readouterr().err == ""


def test_tls_needs_both_files():
    with pytest.raises(ValueError, match="tls_certfile and tls_keyfile"):
        Settings(tls_certfile=Path("c.pem"))


def test_a_websocket_over_tls_follows_a_job_to_its_end_and_is_refused_without_the_ca(
    served: ServiceProcess, ca: LocalCA, tmp_path: Path
):
    with api_client(served.url, None, ca_file=ca.cert_path) as client:
        answer = client.post("/v1/jobs", json={"kind": "test.work", "params": {"value": 3, "steps": 2}})
    assert answer.status_code == 202, answer.text
    url = served.url.replace("https://", "wss://", 1) + f"/v1/jobs/{answer.json()['job_id']}/ws"
    trusted = ssl.create_default_context(cafile=ca.cert_path)
    with ws_connect(url, ssl=trusted, open_timeout=30) as socket:
        types = []
        while not types or types[-1] not in ("succeeded", "failed", "cancelled"):
            types.append(orjson.loads(socket.recv(timeout=60))["event"])
    assert types[0] == "queued" and types[-1] == "succeeded"
    untrusted = ssl.create_default_context(cafile=LocalCA(tmp_path / "other").cert_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        ws_connect(url, ssl=untrusted, open_timeout=30)
