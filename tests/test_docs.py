"""Every command is documented in the README, and the README shows the two entry points."""

from __future__ import annotations

from pathlib import Path

import typer.main

from batchscore.cli import app

README = (Path(__file__).parents[1] / "README.md").read_text()


def command_paths(group, prefix: str = "batchscore") -> list[str]:
    paths = []
    for name, command in getattr(group, "commands", {}).items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            paths += command_paths(command, path)
        else:
            paths.append(path)
    return paths


def test_every_command_is_in_the_readme() -> None:
    paths = command_paths(typer.main.get_command(app))
    assert len(paths) >= 14
    missing = [p for p in paths if f"`{p}" not in README]
    assert not missing, f"undocumented commands: {missing}"


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:1200]
    assert "make demo" in head and "make test" in head
