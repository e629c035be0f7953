"""The replication state file (docs/STORE-FORMAT.md, Home files) read strictly, its bytes kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imgtool.errors import Corrupt
from imgtool.flows import replication
from imgtool.home import Home
from imgtool.vocab import ReplicationState

KEY = ("team", "base", "1.0.0")
FAILED = {"state": "failed", "since": "2026-01-01T00:00:00Z", "progress": 0, "when": "2026-01-01T00:00:05Z",
          "error": "connection refused", "retry": "imgtool replicate team/base@1.0.0"}
COMPLETED = {"state": "completed", "since": "s", "progress": 10, "total": 10, "when": "w",
             "manifest": "sha256:" + "a" * 64, "error": None}


def _home(tmp_path: Path, body: object) -> tuple[Home, Path]:
    home = Home.at(tmp_path / "home")
    home.ensure()
    path = home.root / "replication" / "team" / "base" / "1.0.0.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    return home, path


def test_the_file_reads_typed_and_writes_back_the_same_bytes(tmp_path: Path) -> None:
    home, path = _home(tmp_path, {"format": 1, "targets": {"hub": FAILED, "mirror": COMPLETED}})
    before = path.read_bytes()
    targets = replication.read_state(home, *KEY)
    assert targets["hub"]["state"] is ReplicationState.FAILED and targets["mirror"]["error"] is None
    replication._write_state(home, *KEY, targets)
    assert path.read_bytes() == before


@pytest.mark.parametrize("target", [
    {**FAILED, "surprise": 1}, {**FAILED, "state": "done"}, {**FAILED, "progress": "0"}, {**FAILED, "error": 3},
    {**COMPLETED, "manifest": None}, {**COMPLETED, "total": -1}, {"since": "s"}, "pending"])
def test_a_damaged_target_is_refused_naming_the_file(tmp_path: Path, target: object) -> None:
    home, path = _home(tmp_path, {"format": 1, "targets": {"hub": target}})
    with pytest.raises(Corrupt, match=f"{path} target 'hub'"):
        replication.read_state(home, *KEY)


def test_unknown_top_level_fields_are_refused(tmp_path: Path) -> None:
    home, path = _home(tmp_path, {"format": 1, "targets": {}, "extra": True})
    with pytest.raises(Corrupt, match=str(path)):
        replication.read_state(home, *KEY)
