"""The issue's CLI transcript and the capture/publish rules, with real qemu-img, qemu-io and qemu-nbd."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.images import MiB, convert, identical, make_disk, qemu_io, tree_fingerprint

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    tool = Cli(tmp_path / "home")
    tool("gallery", "create", "team")
    tool("definition", "create", "team/base", "--publisher", "acme", "--offer", "base", "--sku", "v1",
         "--os-type", "linux", "--os-state", "generalized")
    # The disks here are test patterns, no guest OS the audit can read: publishes give --allow-unaudited
    # (the gate itself: tests/test_audit_blank.py).
    return tool


def test_issue_transcript(cli: Cli, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.qcow2")
    v2_raw = tmp_path / "v2.raw"
    convert(disk, v2_raw, "qcow2", "raw")
    qemu_io(v2_raw, "raw", "write -P 0x77 20M 64k")
    disk_v2 = tmp_path / "disk-v2.vmdk"
    convert(v2_raw, disk_v2, "raw", "vmdk")

    digest = cli("capture", str(disk)).stdout.strip()
    assert digest.startswith("blake3:") and len(digest) == 7 + 64
    cli("publish", "team/base", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    cli("publish", "team/base", "--version", "1.1.0", "--os-disk", str(disk_v2), "--allow-unaudited",
        "--exclude-from-latest")

    explained = cli("version", "resolve", "team/base", "--explain").stdout
    assert "team/base@latest -> 1.0.0" in explained
    assert "dropped: excluded from latest" in explained.split("1.1.0", 1)[1].splitlines()[0]

    shown = cli.json("version", "show", "team/base@1.0.0")
    assert isinstance(shown, dict)
    assert shown["version"] == "1.0.0" and shown["disks"][0]["digest"] == digest
    assert shown["disks"][0]["source"]["format"] == "qcow2"

    out = tmp_path / "out.qcow2"
    cli("version", "export", "team/base@1.0.0", str(out))
    assert identical(disk, out, "qcow2", "qcow2")
    out2 = tmp_path / "out2.raw"
    cli("version", "export", "team/base@1.1.0", str(out2), "--format", "raw")
    assert identical(disk_v2, out2, "vmdk", "raw")

    assert "ok:" in cli("verify", "--deep").stdout
    du = cli.json("du")
    assert isinstance(du, dict) and [row["ref"] for row in du["versions"]] == ["team/base@1.0.0",
                                                                                   "team/base@1.1.0"]
    assert du["home_bytes"] >= du["store_bytes"] >= sum(r["unique_bytes"] for r in du["versions"]) > 0
    # v1.1.0 differs from 1.0.0 by one 64 KiB write: it holds only about that much on its own.
    by_name = {row["ref"]: row for row in du["versions"]}
    assert by_name["team/base@1.1.0"]["unique_bytes"] < 300 * 1024
    plan = cli.json("gc", "--dry-run")
    assert isinstance(plan, dict) and plan["dry_run"] is True
    listed = cli.json("version", "list", "team/base")
    assert isinstance(listed, list) and [v["latest"] for v in listed] == [True, False]


@pytest.mark.parametrize("fmt,options", [("raw", ()), ("qcow2", ()), ("qcow2", ("-c",)),
                                         ("qcow2", ("-o", "compat=0.10")), ("vmdk", ()),
                                         ("vmdk", ("-o", "subformat=streamOptimized")), ("vpc", ()),
                                         ("vpc", ("-o", "subformat=fixed")), ("vhdx", ())])
def test_every_format_round_trips(cli: Cli, tmp_path: Path, fmt: str, options: tuple[str, ...]) -> None:
    raw = make_disk(tmp_path / "src.raw", fmt="raw", size_mib=32)
    image = tmp_path / f"image.{fmt}"
    convert(raw, image, "raw", fmt, *options)
    captured = cli.json("capture", str(image))
    assert isinstance(captured, dict) and captured["source"]["format"] == fmt
    cli("publish", "team/base", "--version", "1.0.0", "--os-disk", str(image), "--allow-unaudited")
    out = tmp_path / "out.raw"
    cli("version", "export", "team/base@1.0.0", str(out), "--format", "raw")
    assert identical(image, out, fmt, "raw")


def test_data_disks_and_copy_between_galleries(cli: Cli, tmp_path: Path) -> None:
    os_disk = make_disk(tmp_path / "os.qcow2", size_mib=16)
    data0 = make_disk(tmp_path / "d0.qcow2", size_mib=8, seed=0x10)
    data3 = make_disk(tmp_path / "d3.raw", size_mib=8, seed=0x20, fmt="raw")
    cli("publish", "team/base", "--version", "2.0.0", "--os-disk", str(os_disk), "--allow-unaudited",
        "--data-disk", f"0={data0}", "--data-disk", f"3={data3}")
    cli("gallery", "create", "other")
    cli("definition", "create", "other/copy", "--publisher", "acme", "--offer", "copy", "--sku", "v1",
        "--os-type", "linux", "--os-state", "generalized")
    packs_before = sorted((cli.home / "store" / "packs").rglob("*.pack"))
    cli("publish", "other/copy", "--version", "1.0.0", "--os-disk", "team/base@2.0.0", "--allow-unaudited")
    assert sorted((cli.home / "store" / "packs").rglob("*.pack")) == packs_before  # nothing duplicated
    copied = cli.json("version", "show", "other/copy@1.0.0")
    assert isinstance(copied, dict) and [d["lun"] for d in copied["disks"]] == [None, 0, 3]
    out = tmp_path / "lun3.raw"
    cli("version", "export", "other/copy@1.0.0", str(out), "--format", "raw", "--disk", "3")
    assert identical(data3, out, "raw", "raw")
    clash = cli("publish", "team/base", "--version", "2.0.1", "--os-disk", str(os_disk), "--allow-unaudited",
                "--data-disk", f"1={data0}", "--data-disk", f"1={data3}", ok=False)
    assert clash.returncode == 2 and "LUN 1" in clash.stderr


def test_small_change_adds_about_the_change(cli: Cli, tmp_path: Path) -> None:
    raw = tmp_path / "big.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(raw), "256M"], check=True, capture_output=True)
    with open(raw, "r+b") as handle:  # 64 MiB of incompressible data
        handle.write(os.urandom(64 * MiB))
    cli("publish", "team/base", "--version", "1.0.0", "--os-disk", str(raw), "--allow-unaudited")
    before = _stored_bytes(cli.home)
    qemu_io(raw, "raw", "write -P 0x5a 10M 256k", "write -P 0x5b 40M 64k")
    cli("publish", "team/base", "--version", "1.0.1", "--os-disk", str(raw), "--allow-unaudited")
    added = _stored_bytes(cli.home) - before
    assert added < 1 * MiB, f"a 320 KiB change added {added} bytes"


def _stored_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "store").rglob("*") if p.is_file())


def test_refused_inputs_leave_the_store_unchanged(cli: Cli, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.qcow2", size_mib=8)
    cli("publish", "team/base", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    before = tree_fingerprint(cli.home / "store")
    hostile = tmp_path / "backing.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", "-b", "/etc/passwd", "-F", "raw", str(hostile)],
                   check=True, capture_output=True)
    attempts = [
        (["publish", "team/base", "--version", "1.0.0", "--os-disk", str(disk)], 4),  # exists
        (["publish", "team/base", "--version", "1.2", "--os-disk", str(disk)], 2),
        (["publish", "team/base", "--version", "2.0.0", "--os-disk", str(hostile)], 5),
        (["publish", "team/base", "--version", "2.0.0", "--os-disk", str(tmp_path / "missing")], 3),
        (["publish", "nope/base", "--version", "2.0.0", "--os-disk", str(disk)], 3),
        (["publish", "team/base", "--version", "2.0.0", "--os-disk", str(disk), "--format", "raw"], 2),
        (["publish", "team/base", "--version", "2.0.0", "--os-disk", str(disk), "--os-state", "specialized"], 5),
        (["capture", str(hostile)], 5),
        (["gallery", "delete", "team"], 5),
        (["definition", "delete", "team/base"], 5),
        (["gallery", "create", "../etc"], 2),
        (["version", "show", "team/base@9.9.9"], 3),
    ]
    for args, code in attempts:
        done = cli(*args, ok=False)
        assert done.returncode == code, (args, done.returncode, done.stderr)
        assert done.stderr.startswith("imgtool: error: "), done.stderr
        assert "Traceback" not in done.stderr
        assert tree_fingerprint(cli.home / "store") == before, args


def test_version_rules(cli: Cli, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk.qcow2", size_mib=8)
    for version in ("1.0.0", "1.10.0", "1.9.0"):
        cli("publish", "team/base", "--version", version, "--os-disk", str(disk), "--allow-unaudited")
    assert "-> 1.10.0" in cli("version", "resolve", "team/base").stdout
    cli("version", "update", "team/base@1.10.0", "--exclude-from-latest")
    assert "-> 1.9.0" in cli("version", "resolve", "team/base").stdout
    shown = cli.json("version", "show", "team/base@latest")
    assert isinstance(shown, dict) and shown["version"] == "1.9.0"
    cli("version", "update", "team/base@1.9.0", "--block-deletion", "--end-of-life", "2999-01-01")
    refused = cli("version", "delete", "team/base@1.9.0", ok=False)
    assert refused.returncode == 5 and "end of life" in refused.stderr
    cli("version", "delete", "team/base@1.0.0")
    gone = cli("version", "show", "team/base@1.0.0", ok=False)
    assert gone.returncode == 3
    freed = cli.json("gc")
    assert isinstance(freed, dict)
    assert "ok:" in cli("verify", "--deep").stdout
