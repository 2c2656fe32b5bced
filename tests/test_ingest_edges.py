"""The ingest API at its edges: every bad input is a 4xx problem+json naming what is wrong, and no
request (huge, deeply nested, or slow to send its body) stalls the process."""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from jobstream.server import create_app
from store.clickhouse import ClickHouseStore
from streams.settings import Settings
from tests.support.calcs import OVERFLOWING
from tests.support.servers import Server
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

KEY = "edge-tenant-key-0123456789"
JOB = {"kind": "stats.describe", "params": {"values": [1, 2, 3]}}
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def edge(stack: str, settings: Settings, store: ClickHouseStore) -> Iterator[Server]:
    """An API with keys and a short body timeout, on the stack's topics (its worker and sink serve it)."""
    local = settings.model_copy(update={"api_keys": SecretStr(f"edge={KEY}"), "body_timeout_s": 1.0})
    server = Server(create_app(local, {"api", "gateway"}, store=store)).start()
    wait_until(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 60, message="edge API ready")
    yield server
    server.stop()


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def fields_of(response: httpx.Response) -> set[str]:
    assert response.headers["content-type"] == PROBLEM, response.text[:500]
    return {e["field"] for e in response.json().get("errors", [])}


# --- strict types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "stats.describe", "params": {"values": [True, False]}}, "params.values.0"),
        ({"kind": "stats.describe", "params": {"values": ["1"]}}, "params.values.0"),
        ({**JOB, "priority": True}, "priority"),
        ({**JOB, "priority": 1.0}, "priority"),
        ({**JOB, "timeout_s": "10"}, "timeout_s"),
        ({**JOB, "timeout_s": True}, "timeout_s"),
        (
            {"kind": "stats.describe", "params": {"generate": {"distribution": "normal", "n": "10", "seed": 1}}},
            "params.generate.n",
        ),
        ({"kind": "linear.fit", "params": {"x": [[1], [2]], "y": [1, 2], "intercept": 1}}, "params.intercept"),
        (
            {
                "kind": "montecarlo.var",
                "params": {
                    "weights": [1],
                    "mu": [0],
                    "cov": [[1]],
                    "horizon_days": "1",
                    "paths": 10,
                    "confidence": 0.9,
                    "seed": 1,
                },
            },
            "params.horizon_days",
        ),
    ],
)
def test_lax_types_are_422_naming_the_field(client: httpx.Client, body: dict[str, Any], field: str):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422 and field in fields_of(response)
    batch = client.post("/v1/jobs:batch", json={"jobs": [body]})
    assert batch.status_code == 422
    assert f"jobs.0.{field}" in {e["field"] for e in batch.json()["jobs"][0]["error"]["errors"]}


def test_integers_where_floats_are_expected_stay_accepted(client: httpx.Client):
    response = client.post("/v1/jobs", json={**JOB, "timeout_s": 10, "priority": 3})
    assert response.status_code == 202


@pytest.mark.parametrize("body", [{"kind": kind, "params": params} for kind, params in OVERFLOWING.items()])
def test_overflow_is_a_calculation_error_never_a_success_with_nulls(client: httpx.Client, body: dict[str, Any]):
    job_id = client.post("/v1/jobs", json=body).json()["job_id"]
    view = wait_until(
        lambda: (v := client.get(f"/v1/jobs/{job_id}").json())["status"] in {"succeeded", "failed"} and v,
        60,
        message="overflowing job done",
    )
    if view["status"] == "succeeded":  # a finite result is fine too
        assert None not in orjson.loads(orjson.dumps(view["result"])).values(), view["result"]
    else:
        assert view["error"]["type"] == "calculation_error", view["error"]


# --- huge and deep bodies -------------------------------------------------------------------------


def stall_limit(url: str) -> float:
    """How slow a /healthz may be while a big body is handled: 0.5 s, or 4x the slowest of 20 idle
    ones when the machine is so loaded that an idle one is already slow (the bug this guards
    against held the loop for seconds). Not less: the server runs in this process (``stack``), so
    the test's own client, encoding and sending 7 MB, and the readers decoding the job's 7 MB
    ``queued`` event share one GIL with it (a fresh-clone CI run of 2026-12-01 saw 0.44 s)."""
    with httpx.Client(base_url=url, timeout=30) as health:
        idle = []
        for _ in range(20):
            started = time.perf_counter()
            health.get("/healthz")
            idle.append(time.perf_counter() - started)
    return max(0.5, 4 * max(idle))


def _healthz_while(url: str, send: Any) -> tuple[httpx.Response, float]:
    """Run ``send()`` while polling /healthz; returns its answer and the slowest /healthz."""
    slowest = 0.0
    done = threading.Event()
    answers: list[httpx.Response] = []

    def poll() -> None:
        nonlocal slowest
        with httpx.Client(base_url=url, timeout=30) as health:
            health.get("/healthz")  # connect before the big request starts
            while not done.is_set():
                started = time.perf_counter()
                assert health.get("/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        answers.append(send())
    finally:
        done.set()
        poller.join(timeout=30)
    return answers[0], slowest


def test_a_million_bad_values_is_a_small_422_and_healthz_stays_fast(stack: str):
    body = orjson.dumps({"kind": "stats.describe", "params": {"values": ["x"] * 1_000_000}})
    assert len(body) > 4_000_000
    with httpx.Client(base_url=stack, timeout=60) as client:
        limit = stall_limit(stack)
        response, slowest = _healthz_while(
            stack, lambda: client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        )
    assert response.status_code == 422 and len(response.content) < 20_000
    problem = response.json()
    assert "params.values.0" in {e["field"] for e in problem["errors"]} and problem["error_count"] >= 1
    assert slowest < limit, f"/healthz took {slowest:.3f}s (limit {limit:.3f}s) while a big body was validated"


def test_a_million_valid_values_is_accepted_without_stalling(stack: str):
    body = orjson.dumps({"kind": "stats.describe", "params": {"values": list(range(1_000_000))}})
    with httpx.Client(base_url=stack, timeout=60) as client:
        limit = stall_limit(stack)
        response, slowest = _healthz_while(
            stack,
            lambda: client.post(
                "/v1/jobs",
                content=body,
                headers={"content-type": "application/json", "Idempotency-Key": f"big-{uuid.uuid4()}"},
            ),
        )
    assert response.status_code == 202, response.text[:500]
    assert slowest < limit, f"/healthz took {slowest:.3f}s (limit {limit:.3f}s) while a big body was validated"


def test_errors_listed_are_capped_with_a_count(client: httpx.Client, settings: Settings):
    jobs = [{"kind": "stats.describe", "params": {"values": [1]}, f"extra{i}": i} for i in range(1)]
    wide = {**JOB, **{f"unknown{i}": i for i in range(500)}}
    response = client.post("/v1/jobs", json=wide)
    assert response.status_code == 422
    problem = response.json()
    assert problem["error_count"] == 500 and len(problem["errors"]) == settings.max_listed_errors
    assert client.post("/v1/jobs:batch", json={"jobs": jobs}).status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        b'{"kind": "stats.describe", "params": {"values": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"kind": "stats.describe", "params": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_deeply_nested_json_is_a_4xx(client: httpx.Client, body: bytes):
    for path in ("/v1/jobs", "/v1/jobs:batch"):
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500 and response.headers["content-type"] == PROBLEM, path


# --- Idempotency-Key ------------------------------------------------------------------------------


def raw_post(url: str, path: str, headers: dict[str, bytes], body: bytes) -> tuple[int, bytes]:
    """POST over a plain socket: headers an HTTP client would refuse to send (blank values) go as they are."""
    host, port = url.removeprefix("http://").split(":")
    head = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers.items())
    request = (
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        ).encode()
        + head
        + b"\r\n"
        + body
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("key", ["", " ", "   ", "a b", "k" * 256, "ключ", "tab\there"])
def test_a_bad_idempotency_key_is_400_naming_the_header(stack: str, key: str):
    status, body = raw_post(stack, "/v1/jobs", {"Idempotency-Key": key.encode("utf-8")}, orjson.dumps(JOB))
    assert status == 400, body
    assert {e["field"] for e in orjson.loads(body)["errors"]} == {"Idempotency-Key"}


@pytest.mark.parametrize("key", ["k", "k" * 255, "order-42:retry/1~!#$%&'*+.^_`|"])
def test_a_good_idempotency_key_is_accepted(client: httpx.Client, key: str):
    key = key[:-8] + uuid.uuid4().hex[:8] if len(key) > 8 else key + uuid.uuid4().hex
    response = client.post("/v1/jobs", json=JOB, headers={"Idempotency-Key": key})
    assert response.status_code == 202


# --- a body that never comes -------------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_is_408(edge: Server):
    host, port = edge.url.removeprefix("http://").split(":")
    declared, sent = 100, b'{"kind": "stats.describe"'
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    ).encode() + sent
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    elapsed = time.monotonic() - started
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"content-type: application/problem+json" in head.lower()
    assert orjson.loads(payload)["status"] == 408
    assert 0.9 <= elapsed < 5, elapsed


def test_a_client_gone_mid_body_is_not_a_server_error(edge: Server, caplog: pytest.LogCaptureFixture):
    host, port = edge.url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode() + b'{"kind": '
    with caplog.at_level("DEBUG", logger="edge.body_limit"):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(request)
        wait_until(
            lambda: any("client left" in r.getMessage() for r in caplog.records), 10, message="the request ended"
        )
        response = httpx.post(f"{edge.url}/v1/jobs", json=JOB, headers=auth())
        assert response.status_code == 202
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]


def test_a_slow_but_steady_body_is_not_cut(edge: Server):
    def chunks() -> Iterator[bytes]:
        raw = orjson.dumps(JOB)
        for part in (raw[:10], raw[10:20], raw[20:]):
            time.sleep(0.4)  # each piece well within the 1 s body timeout
            yield part

    response = httpx.post(
        f"{edge.url}/v1/jobs", content=chunks(), headers={**auth(), "content-type": "application/json"}
    )
    assert response.status_code == 202


# --- what is public -----------------------------------------------------------------------------------


def test_schema_routes_are_public_and_everything_else_needs_a_key(edge: Server):
    for path in ("/v1/kinds", "/openapi.json", "/docs", "/healthz"):
        assert httpx.get(f"{edge.url}{path}").status_code == 200, path
    for method, path in (
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", "/v1/jobs/x"),
        ("GET", "/v1/stats"),
        ("POST", "/v1/stream-tokens"),
        ("GET", "/v1/replays"),
    ):
        assert httpx.request(method, f"{edge.url}{path}", json={}).status_code == 401, path


# --- query parameters ---------------------------------------------------------------------------------


def _cursor(ts: str, job_id: str = "x") -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts, job_id])).decode().rstrip("=")


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": "abc"}, "limit"),
        ({"limit": "1e3"}, "limit"),
        ({"limit": str(10**30)}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "١٢"}, "limit"),
        ({"status": "ünïcode"}, "status"),
        ({"status": "SUCCEEDED"}, "status"),
        ({"cursor": "ünïcode"}, "cursor"),
        ({"cursor": "A" * 10_000}, "cursor"),
        ({"cursor": _cursor("0001-01-01T00:00:00")}, "cursor"),
        ({"cursor": _cursor("9999-12-31T23:59:59")}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["2026-01-01T00:00:00"]').decode()}, "cursor"),
    ],
)
def test_bad_query_parameters_of_the_listing_are_4xx_naming_them(
    client: httpx.Client, params: dict[str, str], field: str
):
    response = client.get("/v1/jobs", params=params)
    assert response.status_code in (400, 422), response.text[:300]
    assert any(f.split(".")[-1] == field for f in fields_of(response)), response.text[:300]


@pytest.mark.parametrize("params", [{"kind": "ünïcode\u0000"}, {"kind": "k" * 10_000}, {"kind": "'; DROP"}])
def test_odd_but_harmless_filters_list_nothing(client: httpx.Client, params: dict[str, str]):
    response = client.get("/v1/jobs", params=params)
    assert response.status_code == 200 and response.json()["jobs"] == []


@pytest.mark.parametrize("job_id", ["ünïcode", "x" * 5000, "%00", "..%2f..%2fetc"])
def test_odd_job_ids_are_404(client: httpx.Client, job_id: str):
    for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/result"):
        response = client.get(path)
        assert response.status_code == 404 and response.headers["content-type"] == PROBLEM, path


def test_a_7_mb_event_reaches_a_live_stream_whole(stack: str):
    """The gateway's tail fetches 64 KB per partition and queues 1 MB (``sse_gateway.tail``): a
    bigger record must still come through, alone, and whole."""
    from tests.support.sse import Reader

    reader = Reader(stack, "/v1/events").start()
    try:
        assert reader.status == 200
        values = list(range(1_000_000))
        with httpx.Client(base_url=stack, timeout=60) as client:
            response = client.post("/v1/jobs", json={"kind": "stats.describe", "params": {"values": values}})
        assert response.status_code == 202, response.text[:500]
        job_id = response.json()["job_id"]

        def seen(type_: str) -> dict[str, Any] | None:
            for sse in list(reader.events):
                if sse.event == type_ and f'"job_id":"{job_id}"' in sse.data[:200]:
                    return orjson.loads(sse.data)
            return None

        wait_until(lambda: seen("succeeded") is not None, 120, message="the big job's end on the stream")
        queued = seen("queued")
        assert queued is not None and len(queued["data"]["params"]["values"]) == 1_000_000
        assert seen("succeeded")["data"]["result"]["count"] == 1_000_000  # type: ignore[index]
    finally:
        reader.close()
