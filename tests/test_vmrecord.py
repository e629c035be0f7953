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
    write_record(home, "a", RECORD)
    assert load(home, "a").name == "a"
    assert load(home, "a").to_json() == {**RECORD, "base_disks": ["blake3:" + "b" * 64], "generalized": False}


RECORD = {"format": FORMAT, "kind": "vm", "name": "a", "created": "2026-12-01T00:00:00Z", "image": "g/d@1.0.0",
          "version_digest": "blake3:" + "a" * 64, "os_state": "generalized", "definition": {},
          "definition_record": "blake3:" + "c" * 64, "cpus": 1, "memory_mib": 256, "firmware": "bios",
          "arch": "x86_64", "seed": None,
          "disks": [{"lun": None, "overlay": "disk-os.qcow2", "base": "/b", "base_disk": "blake3:" + "b" * 64,
                     "virtual_size": 1024}]}


@pytest.mark.parametrize(("change", "field"), [
    ({"disks": None}, "disks"), ({"cpus": "2"}, "cpus"), ({"cpus": True}, "cpus"), ({"name": 3}, "name"),
    ({"disks": [{"lun": None}]}, "overlay"), ({"disks": [{**RECORD["disks"][0], "overlay": "../x"}]}, "overlay"),  # type: ignore[index]
    ({"seed": {"file": "seed.iso"}}, "digest"), ({"image": None}, "image")])
def test_mistyped_or_missing_fields_are_corrupt_naming_the_field(tmp_path: Path, change: dict[str, object],
                                                                 field: str) -> None:
    home = Home.at(tmp_path)
    write_record(home, "a", {**RECORD, **change})
    with pytest.raises(Corrupt, match=field) as info:
        load(home, "a")
    assert "VM 'a'" in info.value.message


@pytest.mark.parametrize("body", [{"format": 2, "kind": "vm", "name": "b"}, {"kind": "vm", "name": "b"},
                                  {"format": True, "kind": "vm", "name": "b"}])
def test_unknown_formats_are_refused(tmp_path: Path, body: object) -> None:
    home = Home.at(tmp_path)
    write_record(home, "b", body)
    with pytest.raises(Corrupt, match="format") as info:
        load(home, "b")
    assert "upgrade imgtool" in info.value.hint


@pytest.mark.parametrize(("body", "says"), [({"format": FORMAT, "kind": "gallery"}, "'gallery' record"),
                                            (["not", "a", "record"], "not a JSON object"), ("{", "unreadable")])
def test_records_of_another_kind_or_shape_are_corrupt(tmp_path: Path, body: object, says: str) -> None:
    home = Home.at(tmp_path)
    if body == "{":
        (home.vms / "b").mkdir(parents=True)
        (home.vms / "b" / "vm.json").write_text("{")
    else:
        write_record(home, "b", body)
    with pytest.raises(Corrupt, match=says):
        load(home, "b")


def test_missing_vm(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        load(Home.at(tmp_path), "nope")


def test_state_json_keeps_its_bytes_and_is_read_strictly(tmp_path: Path) -> None:
    from imgtool.vm.record import Forward
    from imgtool.vm.state import STATE, RunState, read

    old = {"pid": 7, "accel": "kvm", "ssh_port": 2222, "qmp": "/q.sock", "started": "2026-01-01T00:00:00Z",
           "qemu_argv": ["qemu-system-x86_64", "-m", "512"], "forwards": [{"host": 8080, "guest": 80}]}
    state = RunState(7, "kvm", 2222, "/q.sock", "2026-01-01T00:00:00Z", ("qemu-system-x86_64", "-m", "512"),
                     (Forward(8080, 80),))
    assert state.dumps() == json.dumps(old, indent=2).encode()  # what vm start wrote before the record
    warm = RunState(7, "kvm", 2222, "/q.sock", "t", (), warm="2x512")
    assert list(warm.to_json()) == ["pid", "accel", "ssh_port", "qmp", "started", "qemu_argv", "warm", "forwards"]
    assert read(tmp_path) is None
    (tmp_path / STATE).write_bytes(state.dumps())
    assert read(tmp_path) == state
    without = {k: v for k, v in old.items() if k != "forwards"}  # written before port forwards existed
    (tmp_path / STATE).write_text(json.dumps(without))
    assert read(tmp_path) == RunState(7, "kvm", 2222, "/q.sock", "2026-01-01T00:00:00Z", state.qemu_argv)
    for bad in ({**old, "surprise": 1}, {**old, "pid": "7"}, {**old, "qemu_argv": None}, without | {"pid": None},
                {k: v for k, v in old.items() if k != "qemu_argv"}, {**old, "forwards": [{"host": 1}]}, [1]):
        (tmp_path / STATE).write_text(json.dumps(bad))
        with pytest.raises(Corrupt, match=str(tmp_path / STATE)):
            read(tmp_path)
    (tmp_path / STATE).write_text("{")
    with pytest.raises(Corrupt, match="not JSON"):
        read(tmp_path)
