"""README and the CLI stay in step: every command documented, every documented command and
option real."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer.main

from batchscore.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text()
CLI = typer.main.get_command(app)


def command_paths(group, prefix: str = "batchscore") -> list[str]:
    paths = []
    for name, command in getattr(group, "commands", {}).items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            paths += command_paths(command, path)
        else:
            paths.append(path)
    return paths


def readme_command_rows() -> list[str]:
    """The first cell of each row of README's command table: `batchscore …`."""
    rows = re.findall(r"^\| `(batchscore [^`]*)`", README, flags=re.MULTILINE)
    return [row.replace("\\|", "|") for row in rows]


def resolve(row: str) -> tuple[str, click.Command]:
    """The CLI command a README row starts with (longest matching path)."""
    words = row.split()[1:]
    command: click.Command = CLI
    path = ["batchscore"]
    for word in words:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command, path = sub, [*path, word]
    return " ".join(path), command


def option_names(command: click.Command) -> set[str]:
    return {o for p in command.params for o in [*p.opts, *p.secondary_opts] if o.startswith("-")}


def test_every_command_is_in_the_readme_table() -> None:
    paths = command_paths(CLI)
    assert len(paths) >= 14
    documented = {resolve(row)[0] for row in readme_command_rows()}
    missing = [p for p in paths if p not in documented]
    assert not missing, f"commands missing from README's command table: {missing}"


def test_every_readme_command_and_option_exists() -> None:
    rows = readme_command_rows()
    assert len(rows) >= 20
    global_options = option_names(CLI)
    for row in rows:
        path, command = resolve(row)
        assert not hasattr(command, "commands"), f"README: {row!r} names no command ({path})"
        shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", row))
        unknown = shown - option_names(command) - global_options
        assert not unknown, f"README: {row!r}: {path} has no option {sorted(unknown)}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:1200]
    assert "make demo" in head and "make test" in head
