"""Help that lists a group's commands lists all of them (a command added later must not go missing)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer

from imgtool.cli.main import app

# Groups whose summary enumerates their commands.
ENUMERATING = [("version",), ("vm", "snapshot")]


def _group(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


@pytest.mark.parametrize("path", ENUMERATING, ids=" ".join)
def test_a_group_summary_names_every_command(path: tuple[str, ...]) -> None:
    group = _group(path)
    summary = group.help or ""
    missing = [name for name in group.commands if not re.search(rf"\b{re.escape(name)}\b", summary)]
    assert not missing, f"imgtool {' '.join(path)} --help does not name {missing}: {summary!r}"
