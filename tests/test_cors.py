"""CORS for pages on other origins: an explicit allow-list, preflights answered, refusals readable.

These exercise the HTTP surface only (CORS headers, preflights, refused tokens), which is answered
before anything touches Kafka: the app is served without its lifespan. tests/test_browser.py
runs the same in a real browser against the real stack.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

from jobstream.server import create_app
from sse_gateway.routes import INVALID_TOKEN
from streams.settings import Settings

PAGE = "http://127.0.0.1:5173"
KEY = "key-acme-0123456789"
KEYS = SecretStr(f"acme={KEY}")


class AppClient:
    """Calls the app in-process without its lifespan (Kafka never starts)."""

    def __init__(self, app) -> None:  # type: ignore[no-untyped-def]
        self.transport = httpx.ASGITransport(app=app)

    def request(self, method: str, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://jobstream") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(call())

    def options(self, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        return self.request("OPTIONS", path, **kwargs)

    def get(self, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
        return self.request("POST", path, **kwargs)


def app_client(tmp_path: Path, **overrides: object) -> AppClient:
    settings = Settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", api_keys=KEYS, **overrides)
    return AppClient(create_app(settings))


@pytest.fixture
def client(tmp_path: Path) -> Iterator[AppClient]:
    yield app_client(tmp_path, cors_origins=f"{PAGE}, https://app.example.com")


def preflight(
    client: AppClient, path: str, method: str = "POST", origin: str = PAGE, headers: str = "authorization,content-type"
):  # type: ignore[no-untyped-def]
    return client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


def test_the_token_route_answers_a_preflight_that_asks_for_authorization(client: AppClient):
    answer = preflight(client, "/v1/stream-tokens")
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == PAGE
    allowed = {h.strip().lower() for h in answer.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id"} <= allowed
    assert "POST" in answer.headers["access-control-allow-methods"]
    assert "access-control-allow-credentials" not in answer.headers
    assert int(answer.headers["access-control-max-age"]) == 600


def test_stream_and_api_routes_carry_cors_headers_and_expose_what_pages_need(client: AppClient):
    minted = client.post(
        "/v1/stream-tokens", json={"job_id": "j1"}, headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}"}
    )
    assert minted.status_code == 201 and minted.headers["access-control-allow-origin"] == PAGE
    exposed = {h.strip().lower() for h in minted.headers["access-control-expose-headers"].split(",")}
    assert {"location", "retry-after", "www-authenticate"} <= exposed
    assert preflight(client, "/v1/jobs/j1/events", "GET", headers="last-event-id").status_code == 200
    assert preflight(client, "/v1/jobs", "POST").status_code == 200
    refused = client.get("/v1/jobs/j1/events", params={"token": "x.y"}, headers={"Origin": PAGE})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == PAGE


def test_an_origin_not_listed_gets_no_cors_headers(client: AppClient):
    answer = preflight(client, "/v1/stream-tokens", origin="http://evil.example")
    assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers
    plain = client.post(
        "/v1/stream-tokens", headers={"Origin": "http://evil.example", "Authorization": f"Bearer {KEY}"}
    )
    assert "access-control-allow-origin" not in plain.headers


def test_without_origins_cors_is_off(tmp_path: Path):
    client = app_client(tmp_path)
    assert preflight(client, "/v1/stream-tokens").status_code == 405
    assert (
        "access-control-allow-origin"
        not in client.post("/v1/stream-tokens", headers={"Origin": PAGE, "Authorization": f"Bearer {KEY}"}).headers
    )


@pytest.mark.parametrize(
    "origins",
    [
        "*",
        "http://a.example,*",
        "https://*.example.com",
        "http://a.example/",
        "http://a.example/app",
        "a.example",
        "ftp://a.example",
        "http://u@a.example",
        "http://a.example?x=1",
        "http://a.example:99999",
    ],
)
def test_wildcards_and_what_is_not_an_origin_are_refused_at_start(origins: str):
    with pytest.raises(ValidationError, match="cors_origins"):
        Settings(cors_origins=origins)


def test_listed_origins_are_taken_exactly():
    settings = Settings(cors_origins=" https://a.example , http://127.0.0.1:8080,,http://[::1]:3000")
    assert settings.cors_origin_list() == ["https://a.example", "http://127.0.0.1:8080", "http://[::1]:3000"]


def test_a_refused_stream_token_tells_the_page_to_get_a_new_one(client: AppClient):
    refused = client.get("/v1/jobs/j1/events", params={"token": "bm90.aXQ"}, headers={"Origin": PAGE})
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == INVALID_TOKEN and refused.json()["reason"] == "bad signature"
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    assert "last_event_id" in refused.json()["detail"]
