"""The CLI's client commands as a user runs them: ``python -m jobstream.cli`` in a subprocess, configured
by JOBSTREAM_URL / JOBSTREAM_API_KEY, against the real stack; exit codes 0 / 1 / 2 and --json output."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from streams.settings import Settings
from tests.support import ROOT
from tests.support.kafka import produce_requests
from tests.support.waiting import wait_until

pytestmark = pytest.mark.kafka

SLOW_PARAMS = {  # montecarlo.var that runs for seconds, with progress points (cancellable)
    "weights": [0.05] * 20,
    "mu": [0.0] * 20,
    "cov": [[1e-4 if i == j else 0.0 for j in range(20)] for i in range(20)],
    "horizon_days": 1,
    "paths": 10_000_000,
    "confidence": 0.99,
    "seed": 3,
}


def jobstream(*args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBSTREAM_")}
    environ |= {"COLUMNS": "200", **({"JOBSTREAM_URL": url} if url else {}), **env}
    return subprocess.run(
        [sys.executable, "-m", "jobstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env=environ,
    )


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode in (0, 1), done.stderr
    return orjson.loads(done.stdout)


def test_submit_watch_follows_the_job_to_its_result(stack: str):
    done = jobstream("submit", "stats.describe", "--params", '{"values": [1, 2, 3, 4]}', "--watch", "--json", url=stack)
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["status"] == "succeeded" and shown["result"]["mean"] == 2.5
    human = jobstream("submit", "stats.describe", "-p", '{"values": [2, 4]}', "--watch", url=stack)
    assert human.returncode == 0, human.stderr
    assert orjson.loads(human.stdout)["mean"] == 3  # the result, as JSON, on stdout
    assert "succeeded" in human.stderr  # the progress bar's last word


def test_a_failing_job_exits_1_with_watch_and_result(stack: str):
    done = jobstream("submit", "stats.describe", "-p", '{"values": [1e308, 1e308]}', "--watch", "--json", url=stack)
    assert done.returncode == 1, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["status"] == "failed" and shown["error"]["type"] == "calculation_error"
    again = jobstream("result", shown["job_id"], url=stack)
    assert again.returncode == 1 and "failed" in again.stderr
    status = jobstream("status", shown["job_id"], "--json", url=stack)
    assert status.returncode == 1 and orjson.loads(status.stdout)["status"] == "failed"


def test_submit_from_a_file_then_status_result_and_jobs(stack: str, tmp_path: Path):
    params = tmp_path / "params.json"
    params.write_text('{"values": [5, 7]}')
    kind_key = f"cli-{uuid.uuid4()}"
    accepted = as_json(
        jobstream(
            "submit", "stats.describe", "--params", f"@{params}", "--idempotency-key", kind_key, "--json", url=stack
        )
    )
    job_id = accepted["job_id"]
    assert accepted["links"]["self"] == f"/v1/jobs/{job_id}"
    same = as_json(
        jobstream("submit", "stats.describe", "-p", f"@{params}", "--idempotency-key", kind_key, "--json", url=stack)
    )
    assert same["job_id"] == job_id  # the key makes a repeated command return the same job
    result = jobstream("result", job_id, "--json", url=stack)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["result"]["mean"] == 6
    status = jobstream("status", job_id, "--json", url=stack)
    assert status.returncode == 0 and orjson.loads(status.stdout)["status"] == "succeeded"
    table = jobstream("status", job_id, url=stack)
    assert table.returncode == 0 and "succeeded" in table.stdout and "100%" in table.stdout
    wait_until(
        lambda: (
            job_id in {j["job_id"] for j in as_json(jobstream("jobs", "--limit", "50", "--json", url=stack))["jobs"]}
        ),
        60,
        0.5,
        message="the job listed",
    )
    listed = as_json(
        jobstream("jobs", "--kind", "stats.describe", "--status", "succeeded", "-n", "2", "--json", url=stack)
    )
    assert 1 <= len(listed["jobs"]) <= 2 and {j["status"] for j in listed["jobs"]} == {"succeeded"}
    human = jobstream("jobs", "-n", "3", url=stack)
    assert human.returncode == 0 and "status" in human.stdout and "job(s)" in human.stdout


def test_cancel_exits_0_then_1_once_finished_and_2_for_an_unknown_job(stack: str, client: httpx.Client):
    job_id = client.post("/v1/jobs", json={"kind": "montecarlo.var", "params": SLOW_PARAMS}).json()["job_id"]
    done = jobstream("cancel", job_id, "--json", url=stack)
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["job_id"] == job_id
    wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "cancelled", 120, message="cancelled")
    again = jobstream("cancel", job_id, url=stack)
    assert again.returncode == 1 and "cancelled" in again.stderr
    result = jobstream("result", job_id, "--json", url=stack)
    assert result.returncode == 1 and orjson.loads(result.stdout)["status"] == "cancelled"
    unknown = jobstream("cancel", uuid.uuid4().hex, url=stack)
    assert unknown.returncode == 2 and "404" in unknown.stderr
    assert jobstream("status", uuid.uuid4().hex, url=stack).returncode == 2


def test_dead_letters_list_and_redrive_with_fixed_params(stack: str, settings: Settings, tmp_path: Path):
    job_id = uuid.uuid4().hex
    request = {"job_id": job_id, "tenant": "default", "kind": "stats.describe", "params": [1], "priority": 0}
    produce_requests(settings, orjson.dumps(request))

    def listed() -> dict[str, Any] | None:
        page = as_json(jobstream("dead-letters", "list", "--limit", "1000", "--json", url=stack))
        return next((d for d in page["dead_letters"] if d["job_id"] == job_id), None)

    letter = wait_until(listed, 90, 0.5, message="the dead letter listed")
    assert isinstance(letter, dict) and letter["reason"] == "undecodable"
    table = jobstream("dead-letters", "list", url=stack)
    assert table.returncode == 0 and letter["id"] in table.stdout
    refused = jobstream("dead-letters", "redrive", letter["id"], url=stack)  # its params are unreadable
    assert refused.returncode == 2 and "params: required for this dead letter" in refused.stderr
    fixed = tmp_path / "fixed.json"
    fixed.write_text('{"values": [2, 8]}')
    redriven = as_json(jobstream("dead-letters", "redrive", letter["id"], "--params", f"@{fixed}", "--json", url=stack))
    assert redriven["redrive_of"] == letter["id"] and redriven["job_id"] != job_id
    result = jobstream("result", redriven["job_id"], "--json", url=stack)
    assert result.returncode == 0 and orjson.loads(result.stdout)["result"]["mean"] == 5
    state = jobstream("dead-letters", "list", "--redriven", "--limit", "1000", url=stack)
    assert state.returncode == 0 and f"re-driven as {redriven['job_id']}" in state.stdout, state.stdout
    still_open = as_json(jobstream("dead-letters", "list", "--not-redriven", "--limit", "1000", "--json", url=stack))
    assert letter["id"] not in {d["id"] for d in still_open["dead_letters"]}
    key = f"cli-{uuid.uuid4().hex}"
    keyed = [
        as_json(
            jobstream(
                "dead-letters",
                "redrive",
                letter["id"],
                "-p",
                f"@{fixed}",
                "--idempotency-key",
                key,
                "--json",
                url=stack,
            )
        )
        for _ in range(2)
    ]
    assert keyed[0]["job_id"] == keyed[1]["job_id"] != redriven["job_id"]  # the retry: the same job, no second
    listed_twice = as_json(jobstream("dead-letters", "list", "--redriven", "--limit", "1000", "--json", url=stack))
    mine = next(d for d in listed_twice["dead_letters"] if d["id"] == letter["id"])
    assert mine["redriven"]["job_ids"] == [redriven["job_id"], keyed[0]["job_id"]]
    reused = jobstream("dead-letters", "redrive", letter["id"], "--idempotency-key", key, url=stack)  # other body
    assert reused.returncode == 2 and "Idempotency-Key" in reused.stderr, reused.stderr
    bad_key = jobstream("dead-letters", "redrive", letter["id"], "--idempotency-key", "has space", url=stack)
    assert bad_key.returncode == 2 and "Idempotency-Key" in bad_key.stderr, bad_key.stderr
    unknown = jobstream("dead-letters", "redrive", "0-99999999", url=stack)
    assert unknown.returncode == 2 and "id: unknown dead letter" in unknown.stderr


@pytest.mark.parametrize(
    "params, message",
    [
        ("{", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ("@", "needs a file name"),
        ("@/nonexistent/params.json", "cannot open"),
        ("@/tmp", "is a directory"),
        ("@/dev/zero", "not a regular file"),
    ],
)
def test_bad_params_are_usage_errors_before_anything_is_sent(params: str, message: str):
    done = jobstream("submit", "stats.describe", "--params", params, url="http://127.0.0.1:1")
    assert done.returncode == 2 and message in " ".join(done.stderr.split()), done.stderr
    assert "--params" in done.stderr


def test_a_params_file_over_the_limit_is_refused(tmp_path: Path):
    big = tmp_path / "big.json"
    big.write_text('{"values": [' + ", ".join(["1"] * 2000) + "]}")
    done = jobstream(
        "dead-letters", "redrive", "0-1", "-p", f"@{big}", url="http://127.0.0.1:1", JOBSTREAM_MAX_BODY_BYTES="2048"
    )
    assert done.returncode == 2 and "more than 2048" in " ".join(done.stderr.split()), done.stderr


def test_refused_and_unreachable_exit_2_and_the_key_is_never_printed(stack: str):
    secret = f"key-{uuid.uuid4().hex}"
    invalid = jobstream("submit", "stats.describe", "-p", '{"values": ["x"]}', url=stack, JOBSTREAM_API_KEY=secret)
    assert invalid.returncode == 2 and "422" in invalid.stderr and "params.values" in invalid.stderr
    bad_status = jobstream("jobs", "--status", "sleeping", url=stack, JOBSTREAM_API_KEY=secret)
    assert bad_status.returncode == 2 and "status" in bad_status.stderr
    twice = jobstream("submit", "stats.describe", "{}", "-p", "{}", url=stack)
    assert twice.returncode == 2 and "once" in twice.stderr
    for command in (
        ["jobs"],
        ["status", "j"],
        ["cancel", "j"],
        ["dead-letters", "list"],
        ["--help"],
        ["jobs", "--help"],
    ):
        done = jobstream(*command, url="http://127.0.0.1:1", JOBSTREAM_API_KEY=secret)
        assert secret not in done.stdout + done.stderr
        if "--help" not in command:
            assert done.returncode == 2 and "cannot reach" in done.stderr, done.stderr
