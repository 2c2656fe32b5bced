"""The distributed layout cannot run here (no Docker engine), so check it statically:
every service command parses with the real CLI and every environment name is one
Settings reads. Catches a renamed option or variable before a deploy does."""

from pathlib import Path

import click
import pytest
import typer.main
import yaml

from jobstream.cli import app
from streams.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
OURS = {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "jobstream:latest"}


def test_every_role_has_a_service():
    commands = {tuple(svc["command"]) for svc in OURS.values()}
    assert {
        ("serve", "--role", "api"),
        ("serve", "--role", "gateway"),
        ("serve", "--role", "sink"),
        ("worker",),
    } <= commands
    assert COMPOSE["services"]["processors"]["deploy"]["replicas"] >= 2


@pytest.mark.parametrize("name", sorted(OURS))
def test_service_command_parses_with_the_cli(name):
    command = typer.main.get_command(app)
    args = list(OURS[name]["command"])
    sub = command.get_command(click.Context(command), args[0])
    assert sub is not None, f"{name}: unknown subcommand {args[0]!r}"
    sub.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


@pytest.mark.parametrize("name", sorted(OURS))
def test_service_environment_names_are_settings(name):
    unknown = set(OURS[name]["environment"]) - Settings.env_names()
    assert not unknown, f"{name}: Settings does not read {sorted(unknown)}"
    Settings(
        **{
            k.removeprefix("JOBSTREAM_").lower(): v
            for k, v in OURS[name]["environment"].items()
            if k.startswith("JOBSTREAM_")
        }
    )  # and the values validate


def test_dockerfile_copies_every_package():
    """Every package pyproject ships (a new one included) is copied into the image."""
    import tomllib

    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert "replay" in packages
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile
