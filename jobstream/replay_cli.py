"""``jobstream replay``: plan, run, follow, stop, resume and diff replays through the API.

The CLI is a client of ``/v1/replays`` (the replay runs in the API process, which
owns the producer and, with embedded chDB, the only handle on ClickHouse). Without
``--yes`` it only prints the plan; nothing is emitted.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from jobstream.client import api_client

replay_app = typer.Typer(help="Re-run past jobs (e.g. after a calculation fix) and compare the results.")
console = Console()

URL = typer.Option(
    None, "--url", envvar="JOBSTREAM_URL", help="Base URL of the API (default http://JOBSTREAM_HOST:JOBSTREAM_PORT)."
)
API_KEY = typer.Option(None, "--api-key", envvar="JOBSTREAM_API_KEY", help="API key (Bearer); selects the tenant.")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(value: str | None) -> datetime | None:
    """ISO 8601 (naive means UTC) or an age like ``90m``, ``2h``, ``7d``."""
    if value is None:
        return None
    if match := _AGO.match(value.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither ISO 8601 nor an age like 2h") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _client(url: str | None, api_key: str | None) -> httpx.Client:
    from jobstream.cli import base_url

    return api_client(base_url(url), api_key, read_timeout_s=120)  # a plan scans Kafka: give it time


def _ok(response: httpx.Response) -> dict[str, Any]:
    if response.status_code >= 400:
        try:
            problem = response.json()
            message = f"{problem.get('title')}: {problem.get('detail')}"
            if problem.get("errors"):
                message += " (" + "; ".join(f"{e['field']}: {e['reason']}" for e in problem["errors"]) + ")"
        except ValueError:
            message = response.text
        console.print(f"[red]{response.status_code}[/red] {message}")
        raise typer.Exit(1)
    return response.json()


def _versions(pairs: list[str]) -> dict[str, str]:
    versions = {}
    for pair in pairs:
        kind, sep, version = pair.partition("=")
        if not sep or not kind or not version:
            raise typer.BadParameter(f"{pair!r}: use KIND=VERSION", param_hint="--calc-version")
        versions[kind] = version
    return versions


def print_plan(replay: dict[str, Any]) -> None:
    console.print(
        f"replay [bold]{replay['replay_id']}[/bold]: {replay['total']} jobs, "
        f"{replay['rate']:g} jobs/s, state {replay['state']}"
    )
    kinds = Table("kind", "jobs", "runs version", title="by calculation")
    for kind, count in sorted(replay["by_kind"].items()):
        kinds.add_row(kind, str(count), replay["versions"].get(kind, "?"))
    console.print(kinds)
    parts = Table("partition", "from offset", "to offset (excl.)", "selected", title="jobs.requested")
    for r in replay["partitions"]:
        parts.add_row(str(r["partition"]), str(r["start"]), str(r["end"]), str(r["selected"]))
    console.print(parts)


def follow(client: httpx.Client, replay: dict[str, Any]) -> dict[str, Any]:
    """A progress bar until the replay ends; Ctrl-C stops it (resumable)."""
    replay_id = replay["replay_id"]
    try:
        with Progress(
            TextColumn("replay"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("emitted"),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("replay", total=replay["total"], completed=replay["emitted"])
            while replay["state"] == "running":
                time.sleep(0.5)  # polling interval of a progress display, not synchronisation
                replay = _ok(client.get(f"/v1/replays/{replay_id}"))
                bar.update(task, completed=replay["emitted"])
    except KeyboardInterrupt:
        replay = _ok(client.post(f"/v1/replays/{replay_id}:stop"))
        console.print(f"stopping; resume with: jobstream replay resume {replay_id}")
        raise typer.Exit(130) from None
    if replay["state"] == "failed":
        console.print(
            f"[red]replay failed[/red]: {replay.get('error')}; resume with: jobstream replay resume {replay_id}"
        )
        raise typer.Exit(1)
    console.print(
        f"replay {replay_id} {replay['state']}: {replay['emitted']} of {replay['total']} jobs emitted; "
        f"compare with: jobstream replay diff {replay_id}"
    )
    return replay


@replay_app.callback(invoke_without_command=True)
def start(
    ctx: typer.Context,
    since: str | None = typer.Option(None, help="First request time: ISO 8601 (naive = UTC) or an age (2h, 7d)."),
    until: str | None = typer.Option(None, help="Requests before this time (same forms)."),
    kind: list[str] = typer.Option([], "--kind", help="Only this kind (repeatable)."),
    job_id: list[str] = typer.Option([], "--job-id", help="Only this job (repeatable)."),
    status: list[str] = typer.Option([], "--status", help="Only jobs now in this status, e.g. failed (repeatable)."),
    calc_version: list[str] = typer.Option([], "--calc-version", help="KIND=VERSION to run (default: current)."),
    rate: float | None = typer.Option(None, help="Jobs per second (default: JOBSTREAM_REPLAY_DEFAULT_RATE)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Run it. Without this, only print the plan (dry run)."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Select past job requests and re-run them as new jobs (dry run unless --yes); or a subcommand."""
    if ctx.invoked_subcommand is not None:
        return
    body = {
        "since": parse_time(since),
        "until": parse_time(until),
        "kinds": kind,
        "job_ids": job_id,
        "statuses": status,
        "calc_versions": _versions(calc_version),
        "rate": rate,
        "dry_run": not yes,
    }
    with _client(url, api_key) as client:
        replay = _ok(
            client.post(
                "/v1/replays",
                content=orjson.dumps({k: v for k, v in body.items() if v is not None}),
                headers={"Content-Type": "application/json"},
            )
        )
        print_plan(replay)
        if not yes:
            console.print("dry run: nothing was emitted; add --yes to run it")
            return
        follow(client, replay)


@replay_app.command("resume")
def resume(replay_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """Carry on a stopped replay from its recorded position (nothing is emitted twice)."""
    with _client(url, api_key) as client:
        follow(client, _ok(client.post(f"/v1/replays/{replay_id}:resume")))


@replay_app.command("stop")
def stop(replay_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """Stop a running replay at its next job (resumable)."""
    with _client(url, api_key) as client:
        _ok(client.post(f"/v1/replays/{replay_id}:stop"))
    console.print(f"stop requested; resume with: jobstream replay resume {replay_id}")


@replay_app.command("status")
def status(replay_id: str = typer.Argument(...), url: str | None = URL, api_key: str | None = API_KEY) -> None:
    """A replay's plan, progress and outcome counts."""
    with _client(url, api_key) as client:
        replay = _ok(client.get(f"/v1/replays/{replay_id}"))
    print_plan(replay)
    console.print(f"emitted {replay['emitted']} of {replay['total']}; outcomes {replay.get('outcomes')}")


@replay_app.command("diff")
def diff(
    replay_id: str = typer.Argument(...),
    outcome: str | None = typer.Option(None, help="Only equal, changed, failed or pending."),
    limit: int = typer.Option(100, help="Most jobs listed."),
    as_json: bool = typer.Option(False, "--json", help="Print the API's JSON."),
    url: str | None = URL,
    api_key: str | None = API_KEY,
) -> None:
    """Original vs replayed result per job: equal / changed / failed / pending."""
    params: dict[str, Any] = {"limit": limit}
    if outcome:
        params["outcome"] = outcome
    with _client(url, api_key) as client:
        page = _ok(client.get(f"/v1/replays/{replay_id}/diff", params=params))
    if as_json:
        typer.echo(orjson.dumps(page).decode())
        return
    console.print("  ".join(f"{name} {count}" for name, count in page["outcomes"].items()))
    table = Table("original job", "replay job", "outcome", "versions", "original result", "replayed result")
    for row in page["jobs"]:
        table.add_row(
            row["original_job_id"],
            row["replay_job_id"],
            row["outcome"],
            f"{row['original_version'] or '-'} → {row['replay_version']}",
            _short(row["original_result"]),
            _short(row["replay_result"] or row["replay_error"]),
        )
    console.print(table)


def _short(value: Any, width: int = 60) -> str:
    text = orjson.dumps(value).decode() if value not in (None, "") else "-"
    return text if len(text) <= width else text[: width - 1] + "…"
