"""The CLI's client commands: submit (and follow), list, read, cancel jobs; list and re-drive dead letters.

Each is a client of the HTTP API (``--url``/``JOBSTREAM_URL``, ``--api-key``/``JOBSTREAM_API_KEY``;
the key is sent as a Bearer token and never printed). Exit status, for scripts:

- 0: done — the job succeeded (``submit --watch``, ``result``), or the command did what it says;
- 1: the job failed or was cancelled (``cancel`` of a job that already finished, too);
- 2: usage or connection error: bad options or params, a refused request (4xx: the problem is
  printed on stderr, each bad field named), an unknown job, or the API could not be reached.

Human output goes to stdout as rich tables; ``--json`` prints the API's JSON instead, one document.
"""

from __future__ import annotations

import os
import stat
from typing import Any, NoReturn

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobstream.client import ApiError, JobstreamClient, StreamError, submit_job, watch_job

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

URL_HELP = "Base URL of the API (env JOBSTREAM_URL; default http://JOBSTREAM_HOST:JOBSTREAM_PORT)."
KEY_HELP = "API key, sent as a Bearer token and never printed (env JOBSTREAM_API_KEY: prefer it to the flag)."
PARAMS_HELP = (
    "The params as JSON ('{\"values\": [1, 2]}'), or @FILE to read them from that file "
    "(a regular file of at most JOBSTREAM_MAX_BODY_BYTES)."
)

dead_letters_app = typer.Typer(help="Requests the processors could not handle: list them, re-drive them as new jobs.")
out = Console(highlight=False)
if not out.is_terminal:  # piped: whole rows, not the 80 columns rich assumes without a terminal
    out = Console(highlight=False, width=240)
err = Console(stderr=True, highlight=False)


def _url(url: str | None) -> str:
    from jobstream.cli import base_url

    return base_url(url)


def _max_params_bytes() -> int:
    from jobstream.cli import _settings

    return _settings().max_body_bytes


def _url_option() -> Any:
    return typer.Option(None, "--url", envvar="JOBSTREAM_URL", help=URL_HELP, show_default=False)


def _key_option() -> Any:
    return typer.Option(None, "--api-key", envvar="JOBSTREAM_API_KEY", help=KEY_HELP, show_default=False)


def _json_option() -> Any:
    return typer.Option(False, "--json", help="Print the API's JSON (one document) instead of a table.")


def read_params(value: str, max_bytes: int, option: str = "--params") -> dict[str, Any]:
    """``--params``: a JSON object, or ``@path`` to read one from that regular file (no directories, FIFOs
    or devices; at most ``max_bytes``). Raises ``typer.BadParameter`` (exit 2) saying what is wrong."""
    if value.startswith("@"):
        raw = _read_file(value[1:], max_bytes, option)
        where = f"file {value[1:]!r}"
    else:
        raw = value.encode()
        where = "the value"
        if len(raw) > max_bytes:
            raise typer.BadParameter(f"longer than {max_bytes} bytes (JOBSTREAM_MAX_BODY_BYTES)", param_hint=option)
    try:
        params = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise typer.BadParameter(f"{where} is not JSON: {exc}", param_hint=option) from None
    if not isinstance(params, dict):
        raise typer.BadParameter(f"{where} is not a JSON object ({{...}})", param_hint=option)
    return params


def _read_file(path: str, max_bytes: int, option: str) -> bytes:
    """The named file's bytes: opened without blocking (a FIFO never hangs us), checked with fstat."""
    if not path:
        raise typer.BadParameter("@ needs a file name, e.g. @params.json", param_hint=option)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise typer.BadParameter(f"cannot open {path!r}: {exc.strerror}", param_hint=option) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise typer.BadParameter(f"{path!r} is a directory, not a file", param_hint=option)
        if not stat.S_ISREG(info.st_mode):
            raise typer.BadParameter(f"{path!r} is not a regular file", param_hint=option)
        if info.st_size > max_bytes:
            raise typer.BadParameter(
                f"{path!r} is {info.st_size} bytes, more than {max_bytes} (JOBSTREAM_MAX_BODY_BYTES)",
                param_hint=option,
            )
        with os.fdopen(os.dup(fd), "rb") as file:
            raw = file.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(raw) > max_bytes:  # it grew since fstat
        raise typer.BadParameter(
            f"{path!r} is more than {max_bytes} bytes (JOBSTREAM_MAX_BODY_BYTES)", param_hint=option
        )
    return raw


def _fail(exc: ApiError, doing: str) -> NoReturn:
    """A refused request or an unreachable API: the problem on stderr, each bad field named; exit 2."""
    problem = exc.problem
    if exc.status == 0:
        typer.echo(f"{doing}: cannot reach the API: {problem.get('detail', '')}", err=True)
    else:
        typer.echo(f"{doing}: {exc.status} {problem.get('title', '')}: {problem.get('detail', '')}", err=True)
        for error in problem.get("errors") or []:
            typer.echo(f"  {error.get('field')}: {error.get('reason')}", err=True)
    raise typer.Exit(EXIT_USAGE)


def _echo_json(value: Any) -> None:
    typer.echo(orjson.dumps(value).decode())


def _when(timestamp: str | None) -> str:
    """An API timestamp as a table shows it: to the second, UTC."""
    return (timestamp or "")[:19].replace("T", " ")


def _status_exit(status: str | None) -> int:
    return EXIT_FAILED if status in ("failed", "cancelled") else EXIT_OK


def submit(
    kind: str = typer.Argument(..., help="A registered calculation, e.g. stats.describe (see GET /v1/kinds)."),
    params_arg: str | None = typer.Argument(
        None, metavar="[PARAMS]", help="The params as JSON (same as --params; kept for older scripts)."
    ),
    params: str | None = typer.Option(None, "--params", "-p", help=PARAMS_HELP + " Default {}.", show_default=False),
    priority: int | None = typer.Option(None, help="0..9, higher runs first.", show_default=False),
    timeout_s: float | None = typer.Option(None, help="Give up after this long running.", show_default=False),
    idempotency_key: str | None = typer.Option(
        None,
        help="Reuse to make a repeated command return the same job (default: a new UUID per command).",
        show_default=False,
    ),
    watch: bool = typer.Option(False, "--watch", "-w", help="Follow the job with a progress bar; print its result."),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """Submit a job (202 + its id and links). Always sends an Idempotency-Key and reuses it on retries
    (503/429/connection errors), so a retry never makes a second job.

    Exit status: 0 accepted (with --watch: succeeded), 1 (--watch) failed or cancelled, 2 refused,
    bad params or the API unreachable.
    """
    if params is not None and params_arg is not None:
        raise typer.BadParameter("give the params once: as --params or as PARAMS", param_hint="--params")
    text = params if params is not None else params_arg
    parsed = read_params(text, _max_params_bytes()) if text is not None else {}
    base = _url(url)
    try:
        accepted = submit_job(
            base,
            kind,
            parsed,
            priority=priority,
            timeout_s=timeout_s,
            idempotency_key=idempotency_key,
            api_key=api_key,
        )
    except ApiError as exc:
        _fail(exc, "not submitted")
    if not watch:
        if as_json:
            _echo_json(accepted)
        else:
            typer.echo(f"{accepted['job_id']}  {accepted['status']}  {accepted['links']['self']}")
        return
    raise typer.Exit(_follow(base, accepted["job_id"], api_key, as_json))


def _follow(base: str, job_id: str, api_key: str | None, as_json: bool) -> int:
    """A progress bar (on stderr) following the job's events to the end; then its result or error on stdout."""
    terminal: dict[str, Any] | None = None
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, console=err, transient=False) as bar:
            task = bar.add_task(f"{job_id[:12]} queued", total=1.0)
            for event in watch_job(base, job_id, api_key=api_key):
                data = event.data.get("data") or {}
                if event.type == "progress":
                    bar.update(task, completed=float(data.get("progress", 0.0)))
                elif event.type in ("queued", "running", "retrying"):
                    bar.update(task, description=f"{job_id[:12]} {event.type}")
                if event.terminal:
                    bar.update(task, description=f"{job_id[:12]} {event.type}")
                    if event.type == "succeeded":
                        bar.update(task, completed=1.0)
                    terminal = {"type": event.type, "data": data}
    except StreamError as exc:
        _fail(exc, f"cannot follow {job_id}")
    if terminal is None:  # the stream ended without an outcome (it always has one): report, do not guess
        typer.echo(f"the stream of {job_id} ended before the job did", err=True)
        return EXIT_USAGE
    outcome, data = terminal["type"], terminal["data"]
    shown = {"job_id": job_id, "status": outcome}
    if outcome == "succeeded":
        shown |= {"calc_version": data.get("calc_version"), "result": data.get("result")}
    else:
        shown["error"] = data.get("error")
    if as_json:
        _echo_json(shown)
    elif outcome == "succeeded":
        typer.echo(orjson.dumps(data.get("result"), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(f"{job_id} {outcome}: {orjson.dumps(data.get('error')).decode()}", err=True)
    return _status_exit(outcome)


def jobs(
    status: str | None = typer.Option(
        None, "--status", "-s", help="queued, running, succeeded, failed or cancelled.", show_default=False
    ),
    kind: str | None = typer.Option(None, "--kind", "-k", help="Only this calculation.", show_default=False),
    limit: int = typer.Option(20, "--limit", "-n", help="Most jobs to show (at most JOBSTREAM_LIST_MAX_LIMIT)."),
    cursor: str | None = typer.Option(None, help="Go on from a previous page's next_cursor.", show_default=False),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """List your jobs, newest first (GET /v1/jobs). Exit status: 0, or 2 for a refused request."""
    with JobstreamClient(_url(url), api_key) as client:
        try:
            page = client.jobs(status=status, kind=kind, limit=limit, cursor=cursor)
        except ApiError as exc:
            _fail(exc, "cannot list jobs")
    if as_json:
        _echo_json(page)
        return
    table = Table(title=f"{len(page['jobs'])} job(s)")
    table.add_column("job", overflow="fold")
    table.add_column("kind", overflow="fold")
    table.add_column("status", no_wrap=True)
    table.add_column("submitted", no_wrap=True)
    table.add_column("updated", no_wrap=True)
    for job in page["jobs"]:
        table.add_row(job["job_id"], job["kind"], job["status"], _when(job["submitted_at"]), _when(job["updated_at"]))
    out.print(table)
    if page.get("next_cursor"):
        typer.echo(f"more: --cursor {page['next_cursor']}", err=True)


def status(
    job_id: str = typer.Argument(..., help="The job."),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """A job's status, progress and timings (GET /v1/jobs/{id}).

    Exit status: 0 succeeded, queued or running; 1 failed or cancelled; 2 unknown job or API unreachable.
    """
    with JobstreamClient(_url(url), api_key) as client:
        try:
            job = client.job(job_id)
        except ApiError as exc:
            _fail(exc, f"no status for {job_id}")
    if as_json:
        _echo_json(job)
    else:
        table = Table(show_header=False, box=None)
        for field in ("job_id", "kind", "status", "progress", "attempts", "submitted_at", "started_at", "finished_at"):
            value = job.get(field)
            table.add_row(field, "" if value is None else f"{value:.0%}" if field == "progress" else str(value))
        if job.get("error"):
            table.add_row("error", orjson.dumps(job["error"]).decode())
        out.print(table)
    raise typer.Exit(_status_exit(job.get("status")))


def result(
    job_id: str = typer.Argument(..., help="The job."),
    as_json: bool = typer.Option(False, "--json", help="Print {job_id, status, result | error} as JSON."),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """A job's result: waits until it finishes (following its events), then prints the result as JSON.

    Exit status: 0 succeeded, 1 failed or cancelled (the error on stderr), 2 unknown job or API unreachable.
    """
    base = _url(url)
    terminal = None
    try:
        for event in watch_job(base, job_id, api_key=api_key):
            if event.terminal:
                terminal = event
    except StreamError as exc:
        _fail(exc, f"no result for {job_id}")
    if terminal is None:
        typer.echo(f"the stream of {job_id} ended before the job did", err=True)
        raise typer.Exit(EXIT_USAGE)
    data = terminal.data.get("data") or {}
    shown: dict[str, Any] = {"job_id": job_id, "status": terminal.type}
    if terminal.type == "succeeded":
        shown |= {"calc_version": data.get("calc_version"), "result": data.get("result")}
    else:
        shown["error"] = data.get("error")
    if as_json:
        _echo_json(shown)
    elif terminal.type == "succeeded":
        typer.echo(orjson.dumps(data.get("result"), option=orjson.OPT_INDENT_2).decode())
    else:
        typer.echo(f"{job_id} {terminal.type}: {orjson.dumps(data.get('error')).decode()}", err=True)
    raise typer.Exit(_status_exit(terminal.type))


def cancel(
    job_id: str = typer.Argument(..., help="The job."),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """Cancel a job (DELETE /v1/jobs/{id}): a queued one never starts, a running one stops at its next
    progress point. Exit status: 0 cancel requested, 1 it had already finished, 2 unknown job or API unreachable.
    """
    with JobstreamClient(_url(url), api_key) as client:
        try:
            job = client.cancel(job_id)
        except ApiError as exc:
            if exc.status == 409:
                typer.echo(f"{job_id}: {exc.problem.get('title', 'already finished')}", err=True)
                if as_json:
                    _echo_json(exc.problem)
                raise typer.Exit(EXIT_FAILED) from None
            _fail(exc, f"cannot cancel {job_id}")
    if as_json:
        _echo_json(job)
    else:
        typer.echo(f"{job_id}  cancel requested (was {job['status']})")


@dead_letters_app.command("list")
def list_dead_letters(
    limit: int = typer.Option(
        20, "--limit", "-n", help="Most dead letters to show (at most JOBSTREAM_LIST_MAX_LIMIT)."
    ),
    cursor: str | None = typer.Option(None, help="Go on from a previous page's next_cursor.", show_default=False),
    redriven: bool | None = typer.Option(
        None,
        "--redriven/--not-redriven",
        help="Only those re-driven already, or only those never re-driven (default: all).",
        show_default=False,
    ),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """Your dead letters, newest first, each with its state: open, or re-driven as which job
    (GET /v1/dead-letters). Exit status: 0, or 2 for a refused request."""
    with JobstreamClient(_url(url), api_key) as client:
        try:
            page = client.dead_letters(limit=limit, cursor=cursor, redriven=redriven)
        except ApiError as exc:
            _fail(exc, "cannot list dead letters")
    if as_json:
        _echo_json(page)
        return
    table = Table(title=f"{len(page['dead_letters'])} dead letter(s)")
    table.add_column("id", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("reason", no_wrap=True)
    table.add_column("kind", overflow="fold")
    table.add_column("job", overflow="fold")
    table.add_column("source", no_wrap=True)
    table.add_column("state", overflow="fold")
    table.add_column("error", no_wrap=True, overflow="ellipsis", max_width=60)
    for letter in page["dead_letters"]:
        source = letter.get("source")
        again = letter.get("redriven")
        table.add_row(
            letter["id"],
            _when(letter["created_at"]),
            letter["reason"],
            letter.get("kind") or "",
            letter.get("job_id") or "",
            f"{source['partition']}:{source['offset']}" if source else "",
            f"re-driven as {again['job_id']}" + (f" ({len(again['job_ids'])}x)" if len(again["job_ids"]) > 1 else "")
            if again
            else "open",
            (letter.get("error") or "").splitlines()[0][:200] if letter.get("error") else "",
        )
    out.print(table)
    if page.get("next_cursor"):
        typer.echo(f"more: --cursor {page['next_cursor']}", err=True)


@dead_letters_app.command("redrive")
def redrive(
    dead_letter_id: str = typer.Argument(..., metavar="ID", help="The dead letter (its id from `list`)."),
    params: str | None = typer.Option(
        None, "--params", "-p", help=PARAMS_HELP + " Default: the original request's.", show_default=False
    ),
    idempotency_key: str | None = typer.Option(
        None,
        help="Repeating the command with this key answers with the same new job (never a second one).",
        show_default=False,
    ),
    as_json: bool = _json_option(),
    url: str | None = _url_option(),
    api_key: str | None = _key_option(),
) -> None:
    """Submit a dead-lettered request again as a new job, with fixed params if given.

    Exit status: 0 accepted, 2 refused (unknown id, invalid params) or the API unreachable.
    """
    fixed = read_params(params, _max_params_bytes()) if params is not None else None
    with JobstreamClient(_url(url), api_key) as client:
        try:
            accepted = client.redrive(dead_letter_id, fixed, idempotency_key)
        except ApiError as exc:
            _fail(exc, f"cannot re-drive {dead_letter_id}")
    if as_json:
        _echo_json(accepted)
    else:
        typer.echo(f"{accepted['job_id']}  {accepted['status']}  {accepted['links']['self']}")


def install(app: typer.Typer) -> None:
    """Put the client commands on the ``jobstream`` command."""
    for command in (submit, jobs, status, result, cancel):
        app.command()(command)
    app.add_typer(dead_letters_app, name="dead-letters")
