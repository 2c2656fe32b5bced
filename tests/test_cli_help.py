"""The CLI's help tells where each default comes from (rich markup once swallowed "[env …]")."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from jobstream.cli import app


@pytest.mark.parametrize(
    "command, expected",
    [
        (["up"], ["env JOBSTREAM_HOST, default 127.0.0.1", "env JOBSTREAM_WORKERS"]),
        (["worker"], ["env JOBSTREAM_BATCH_MAX_SIZE"]),
        (["watch"], ["default http://JOBSTREAM_HOST:JOBSTREAM_PORT"]),
        (["replay"], ["default: JOBSTREAM_REPLAY_DEFAULT_RATE", "dry run"]),
        (["submit"], ["env JOBSTREAM_URL", "env JOBSTREAM_API_KEY", "@FILE", "JOBSTREAM_MAX_BODY_BYTES"]),
        (["jobs"], ["env JOBSTREAM_URL", "JOBSTREAM_LIST_MAX_LIMIT"]),
        (["dead-letters", "redrive"], ["env JOBSTREAM_URL", "@FILE", "the original request's"]),
    ],
)
def test_help_names_the_environment_variable_and_default(command: list[str], expected: list[str]):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "300", "TERMINAL_WIDTH": "300"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    for fragment in expected:
        assert fragment in text, text
