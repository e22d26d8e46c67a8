"""``--help`` of every command: examples, and no type tags where click tools show none."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from geotrack.cli import app
from tests.cli_helpers import geotrack

#: Every command the app has: a new one is held to the same standard without editing this.
COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands if c.callback)


def _help(tmp_path: Path, *args: str) -> str:
    result = geotrack(*args, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_has_no_type_tags(tmp_path: Path, command: str | None) -> None:
    """Bug 10: typer 0.29 printed `<bool>`, `<str>`, `<int>` after every option, flags too."""
    text = _help(tmp_path, *([command] if command else []))
    assert not re.search(r"<[a-zA-Z\[\]]+>", text), text
    # Flags take no value, so nothing stands between a flag and its help.
    assert re.search(r"--help\s+-h\s+Show this message", text), text


@pytest.mark.parametrize("command", COMMANDS)
def test_options_that_take_a_value_name_it(tmp_path: Path, command: str) -> None:
    text = _help(tmp_path, command)
    names = re.findall(r"│ (--[a-z-]+)(?:\s+-\w)?\s+([A-Z][A-Z,.|\[\]]*|\[[a-z|]+\])\s", text)
    assert names, text  # e.g. ("--store", "TEXT"), ("--port", "INTEGER")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_an_example(tmp_path: Path, command: str) -> None:
    text = _help(tmp_path, command)
    assert "Example" in text
    assert f"geotrack {command} " in text


def test_publish_help_names_its_values(tmp_path: Path) -> None:
    text = _help(tmp_path, "publish")
    assert re.search(r"Usage: .*geotrack publish \[OPTIONS\] \[FILES\]\.\.\.", text), text
    for option, metavar in [
        ("--gpx", "FILE"),
        ("--url", "URL"),
        ("--center", "LAT,LON"),
        ("--speed", "FLOAT"),
        ("--window", "INTEGER"),
        ("--retry-for", "DURATION"),
    ]:
        assert re.search(rf"{option}\s+{re.escape(metavar)}\s", text), (option, text)
    assert re.search(r"--loop\s+Replay", text), text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_in_the_readme(command: str) -> None:
    """A command a user cannot find in the README does not exist for them (sqlite-utils' rule)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert f"geotrack {command}" in readme
