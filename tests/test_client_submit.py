"""``jobstream.client.submit_job`` and ``jobstream submit`` always send an Idempotency-Key and reuse
it on retries, so a retry after a 503 of unknown outcome never makes a second job."""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from jobstream.cli import app
from jobstream.client import SubmitError, submit_job


def test_every_attempt_carries_the_same_generated_key():
    """The retry policy, seen from the wire (an HTTP transport stand-in; no Kafka involved)."""
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        if len(seen) < 3:
            return httpx.Response(
                503,
                headers={"Retry-After": "0"},
                json={"title": "Outcome unknown", "outcome": "unknown", "job_id": "j"},
            )
        return httpx.Response(202, json={"job_id": "j", "status": "queued", "links": {}})

    with httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer)) as client:
        assert submit_job("http://api", "stats.describe", {"values": [1]}, client=client)["job_id"] == "j"
    assert len(seen) == 3 and seen[0] and len(set(seen)) == 1
    uuid.UUID(seen[0])


def test_a_4xx_is_not_retried():
    calls = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(422, json={"title": "Invalid params", "errors": [{"field": "params.values"}]})

    with httpx.Client(base_url="http://api", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(SubmitError) as caught:
            submit_job("http://api", "stats.describe", {"values": []}, client=client)
    assert caught.value.status == 422 and len(calls) == 1


@pytest.mark.kafka
def test_submit_job_and_the_cli_against_the_stack(stack: str):
    key = f"client-{uuid.uuid4()}"
    first = submit_job(stack, "stats.describe", {"values": [1, 2]}, idempotency_key=key)
    again = submit_job(stack, "stats.describe", {"values": [1, 2]}, idempotency_key=key)
    assert first["job_id"] == again["job_id"]
    result = CliRunner().invoke(
        app,
        ["submit", "stats.describe", '{"values": [4, 5]}', "--url", stack, "--idempotency-key", key + "-cli", "--json"],
    )
    assert result.exit_code == 0, result.output
    job_id = orjson.loads(result.output)["job_id"]
    repeated = CliRunner().invoke(
        app,
        ["submit", "stats.describe", '{"values": [4, 5]}', "--url", stack, "--idempotency-key", key + "-cli", "--json"],
    )
    assert orjson.loads(repeated.output)["job_id"] == job_id
    refused = CliRunner().invoke(app, ["submit", "stats.describe", '{"values": ["x"]}', "--url", stack])
    assert refused.exit_code == 2 and "not submitted: 422" in refused.output
