"""ClickHouse over https://: the CA option is what the TLS handshake checks, the password from the
environment is sent and never shown.

No ClickHouse server exists here, so the other end is a bare HTTPS endpoint that records what
clickhouse-connect sends and answers like a failing server: this proves the transport and the
credentials, not queries (those run against chDB and, with Docker, a real server elsewhere).
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr

from store.clickhouse import ClickHouseStore, ServerAccess, connect, redact
from streams.certs import LocalCA
from streams.settings import Settings

PASSWORD = "ch-Pa55-wörd"  # noqa: S105 - a test value


class Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        Recorder.seen.append(dict(self.headers))
        body = b"Code: 516. DB::Exception: the test endpoint is not ClickHouse. (AUTHENTICATION_FAILED)"
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def https(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    ca = LocalCA(tmp_path_factory.mktemp("ch-ca"))
    issued = ca.issue("clickhouse", ["127.0.0.1", "localhost"])
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert, issued.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://jobs@127.0.0.1:{server.server_address[1]}", ca.cert_path
    finally:
        server.shutdown()


def test_the_ca_option_is_what_the_handshake_checks_and_the_password_is_sent(
    https: tuple[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    url, ca_file = https
    caplog.set_level(logging.DEBUG)
    Recorder.seen.clear()
    with pytest.raises(Exception) as refused:  # a CA that never signed the server's certificate
        connect(url, access=ServerAccess(SecretStr(PASSWORD), LocalCA(tmp_path / "other").cert_path))
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value) and not Recorder.seen

    with pytest.raises(Exception) as answered:  # the right CA: TLS works, the server answers (as a failure)
        connect(url, access=ServerAccess(SecretStr(PASSWORD), ca_file))
    assert "AUTHENTICATION_FAILED" in str(answered.value) and Recorder.seen
    sent = Recorder.seen[0]
    credentials = sent.get("X-ClickHouse-Key") or base64.b64decode(sent["Authorization"].split()[1]).decode()
    assert PASSWORD in credentials
    assert PASSWORD not in str(answered.value) and PASSWORD not in caplog.text


def test_settings_read_the_password_and_ca_from_the_environment_and_never_show_them(
    monkeypatch: pytest.MonkeyPatch, https: tuple[str, Path]
):
    url, ca_file = https
    monkeypatch.setenv("CLICKHOUSE_URL", url)
    monkeypatch.setenv("CLICKHOUSE_PASSWORD", PASSWORD)
    monkeypatch.setenv("CLICKHOUSE_CA_FILE", str(ca_file))
    settings = Settings()
    access = ServerAccess.from_settings(settings)
    assert access.ca_file == ca_file and access.password is not None
    assert access.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings) + repr(access) + str(settings.env())


def test_a_password_in_the_url_is_redacted_where_it_is_shown():
    assert redact(f"https://jobs:{PASSWORD}@ch.example:8443/db") == "https://jobs:***@ch.example:8443/db"
    assert redact("https://ch.example:8443") == "https://ch.example:8443"
    store = ClickHouseStore.__new__(ClickHouseStore)  # repr only: no server to open
    store.url, store.database, store.access = f"https://u:{PASSWORD}@h:8443", None, ServerAccess(SecretStr(PASSWORD))
    assert PASSWORD not in repr(store)


def test_tls_and_password_options_refuse_chdb_and_plain_http(tmp_path: Path):
    with pytest.raises(ValueError, match="https://"):
        connect("http://127.0.0.1:1", access=ServerAccess(ca_file=tmp_path / "ca.pem"))
    with pytest.raises(ValueError, match="chDB"):
        connect(f"chdb://{tmp_path}", access=ServerAccess(SecretStr(PASSWORD)))
