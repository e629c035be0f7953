"""VM records: an unknown record format is refused with a hint, never misread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, NotFound
from imgtool.home import Home
from imgtool.vm.record import FORMAT, load


def write_record(home: Home, name: str, body: object) -> None:
    folder = home.vms / name
    folder.mkdir(parents=True)
    (folder / "vm.json").write_text(json.dumps(body))


def test_known_format_loads(tmp_path: Path) -> None:
    home = Home.at(tmp_path)
    write_record(home, "a", {"format": FORMAT, "kind": "vm", "name": "a"})
    assert load(home, "a")["name"] == "a"


@pytest.mark.parametrize("body", [{"format": 2, "kind": "vm", "name": "b"}, {"kind": "vm", "name": "b"},
                                  {"format": FORMAT, "kind": "gallery"}, ["not", "a", "record"]])
def test_unknown_formats_are_refused(tmp_path: Path, body: object) -> None:
    home = Home.at(tmp_path)
    write_record(home, "b", body)
    with pytest.raises(Corrupt, match="format") as info:
        load(home, "b")
    assert "upgrade imgtool" in info.value.hint


def test_missing_vm(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load(Home.at(tmp_path), "nope")
