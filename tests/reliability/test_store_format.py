"""A store written by an older imgtool is read exactly, or refused with a hint -- never misread.

fixtures/stores/format1/ is a store frozen as store format 1 wrote it (scripts/make-store-fixture;
today's format, so the first format any later imgtool must keep reading). Copied into a fresh
home, with no lock or scratch folder (git keeps none): its versions list, show and export to
exactly the recorded bytes, verify --deep is clean, and it takes new work (a VM, a publish, gc)
without losing what was in it. Then the same store with a format marker this imgtool does not
know, in store.json, in a version record, in a disk manifest or in a pack index: every command
that meets it refuses with one line and a hint, and leaves the store byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

from store import canonical
from store.packs import HEAD, decode_index, encode_index, iter_index_files
from store.repo import Store
from tests.conftest import require_tools
from tests.reliability.harness import Run, Zygote, fake_ssh_key, fingerprint, random_pieces, write_raw

pytestmark = [pytest.mark.integration]

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "stores" / "format1"


def ok(run: Run) -> Run:
    assert run.status == 0, run.describe()
    return run


def old_home(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(FIXTURE / "store", home / "store")
    return home, json.loads((FIXTURE / "expected.json").read_text())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_format1_store_is_read_exactly_and_keeps_working(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img")
    home, expected = old_home(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    assert ok(zygote.run(["verify", "--deep"], home=home)).stdout.startswith("ok:")
    listed = json.loads(ok(zygote.run(["--json", "version", "list", "old/base"], home=home)).stdout)
    assert {v["version"]: v["record"] for v in listed} == {k: v["record"] for k, v in expected["versions"].items()}
    def exports_exactly(prefix: str) -> None:
        for version, facts in expected["versions"].items():
            for lun in facts["disks"]:
                out = work / f"{prefix}{version}-{lun}.raw"
                extra = [] if lun == "os" else ["--disk", lun]
                ok(zygote.run(["version", "export", f"old/base@{version}", str(out), "--format", "raw", *extra],
                              home=home))
                assert sha256(out) == expected["content_sha256"]["os" if lun == "os" else "data"]

    for version, facts in expected["versions"].items():
        shown = json.loads(ok(zygote.run(["--json", "version", "show", f"old/base@{version}"], home=home)).stdout)
        assert {"os" if d["lun"] is None else str(d["lun"]): d["digest"] for d in shown["disks"]} == facts["disks"]
    exports_exactly("")
    # It takes new work, and keeps the old.
    key = work / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    ok(zygote.run(["vm", "new", "legacy", "--image", "old/base@1.1.0", "--ssh-key", str(key)], home=home))
    disk = write_raw(work / "new.raw", 1 << 20, random_pieces(random.Random(1), 1 << 20, 2))
    ok(zygote.run(["publish", "old/base", "--version", "2.0.0", "--os-disk", str(disk), "--allow-unaudited"],
                  home=home))
    ok(zygote.run(["gc", "--keep-captures", "0"], home=home))
    assert ok(zygote.run(["verify", "--deep"], home=home)).stdout.startswith("ok:")
    for version, facts in expected["versions"].items():
        shown = json.loads(ok(zygote.run(["--json", "version", "show", f"old/base@{version}"], home=home)).stdout)
        assert shown["record"] == facts["record"]
    # Optimize rewrites its format-1 packs as format-2 spans; every disk still exports exactly.
    ok(zygote.run(["optimize"], home=home))
    assert ok(zygote.run(["verify", "--deep"], home=home)).stdout.startswith("ok:")
    for path in iter_index_files(Store.open(home / "store", create=False).layout):
        assert path.read_bytes()[:8] == b"IMGIDX02"
    exports_exactly("optimized-")


def _rewrite_store_json(store: Path, value: dict[str, Any] | bytes) -> None:
    path = store / "store.json"
    path.write_bytes(value if isinstance(value, bytes) else canonical.dumps(value))


def _newer_record(store: Path, name: tuple[str, ...], change: dict[str, Any]) -> None:
    """Re-store the manifest a name points to with `change` applied (correctly hashed), and move the name."""
    opened = Store.open(store, create=False)
    ref = opened.get_name(*name)
    assert ref is not None
    body = {**opened.get_manifest(ref), **change}
    opened.set_name(*name, target=opened.put_manifest(body))


def _newer_disk(store: Path) -> None:
    """A disk manifest in format 2, reached by version 1.0.0 (its record re-stored to link it)."""
    opened = Store.open(store, create=False)
    ref = opened.get_name("versions", "old", "base", "1.0.0")
    assert ref is not None
    record = opened.get_manifest(ref)
    old = record["disks"][0]["digest"]
    newer = opened.put_manifest({**opened.get_manifest(old), "format": 2})
    record["disks"][0]["digest"] = newer
    record["links"] = sorted({newer if link == old else link for link in record["links"]})
    opened.set_name("versions", "old", "base", "1.0.0", target=opened.put_manifest(record))


def _newer_index(store: Path) -> None:
    for path in iter_index_files(Store.open(store, create=False).layout):
        data = bytearray(path.read_bytes())
        data[:8] = b"IMGIDX09"
        data[-32:] = blake3.blake3(bytes(data[:-32])).digest()  # a well-formed index of an unknown format
        path.chmod(0o644)
        path.write_bytes(bytes(data))
        assert HEAD.unpack_from(bytes(data), 0)[0] == b"IMGIDX09"
        return


def _unknown_encoding(store: Path) -> None:
    """A format-2 index (well formed, correctly summed) whose first frame has an encoding nobody wrote yet."""
    for path in iter_index_files(Store.open(store, create=False).layout):
        pack_hex, entries = decode_index(path.read_bytes(), what=path.name)
        path.chmod(0o644)
        path.write_bytes(encode_index(pack_hex, [entries[0]._replace(encoding=200), *entries[1:]]))
        return


VARIANTS: dict[str, tuple[Callable[[Path], None], int, str]] = {  # change, exit code, words of the hint
    "store.json format 2": (lambda s: _rewrite_store_json(s, {"format": 2, "chunk_size": 262144}), 2,
                            "upgrade"),
    "store.json format 0": (lambda s: _rewrite_store_json(s, {"format": 0, "chunk_size": 262144}), 2,
                            "has format 0"),
    "store.json unreadable": (lambda s: _rewrite_store_json(s, b"{format: 1"), 6, "store.json"),
    "store.json odd chunk size": (lambda s: _rewrite_store_json(s, {"format": 1, "chunk_size": 1000}), 6,
                                  "chunk_size"),
    "version record format 2": (lambda s: _newer_record(s, ("versions", "old", "base", "1.0.0"), {"format": 2}), 6,
                                "upgrade imgtool"),
    "version record with a new field": (lambda s: _newer_record(s, ("versions", "old", "base", "1.0.0"),
                                                                {"replicas": 3}), 6, "upgrade imgtool"),
    "definition record format 2": (lambda s: _newer_record(s, ("definitions", "old", "base"), {"format": 2}), 6,
                                   "upgrade imgtool"),
    "disk manifest format 2": (_newer_disk, 6, "upgrade"),
    "pack index format 9": (_newer_index, 6, "newer release"),
    "pack index with an unknown frame encoding": (_unknown_encoding, 6, "upgrade"),
}
# The disk is a pattern, no guest OS the audit can read: the override lets the publish reach the store.
PUBLISH = ["publish", "old/base", "--version", "3.0.0", "--os-disk", "{disk}", "--allow-unaudited"]
COMMANDS = {
    "store.json format 2": [["gallery", "list"], ["version", "show", "old/base@1.0.0"], ["verify"],
                            PUBLISH, ["gc"]],
    "version record format 2": [["version", "show", "old/base@1.0.0"], ["version", "list", "old/base"],
                                ["version", "export", "old/base@1.0.0", "{out}"],
                                ["vm", "new", "x", "--image", "old/base@1.0.0", "--ssh-key", "{key}"]],
    "definition record format 2": [["definition", "show", "old/base"],
                                   PUBLISH],
    "disk manifest format 2": [["version", "export", "old/base@1.0.0", "{out}", "--format", "raw"],
                               ["vm", "new", "x", "--image", "old/base@1.0.0", "--ssh-key", "{key}"]],
    "pack index format 9": [["version", "export", "old/base@1.1.0", "{out}", "--format", "raw"],
                            PUBLISH, ["gc"],
                            ["optimize"]],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_unknown_formats_are_refused_with_a_hint(zygote: Zygote, tmp_path: Path, variant: str) -> None:
    require_tools("qemu-img")
    home, _expected = old_home(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    key = work / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    values = {"disk": str(write_raw(work / "d.raw", 1 << 20, {0: b"x" * 4096})), "out": str(work / "out.img"),
              "key": str(key)}
    change, code, words = VARIANTS[variant]
    change(home / "store")
    before = fingerprint(home / "store")
    fallback = "store.json format 2" if variant.startswith("store.json") else "version record format 2"
    if variant.startswith("pack index"):
        fallback = "pack index format 9"
    commands = COMMANDS.get(variant) or COMMANDS[fallback]
    for template in commands:
        argv = [a.format(**values) for a in template]
        done = zygote.run(argv, home=home)
        assert done.status == code and done.one_line_error(), done.describe()
        assert words in done.stderr, done.describe()
        assert fingerprint(home / "store") == before, f"{variant}: {argv} changed the store"
    assert not (work / "out.img").exists()
