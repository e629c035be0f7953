"""What people read, through the real command line on a real store (issue 19, "Confusing output"): a typo
or a held-back version is named as such, one noun keeps one shape, global options work on both sides of
the command, formats are called by the names the help uses, and nothing is dropped without a word."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.reliability.harness import fake_ssh_key, random_pieces, write_raw

pytestmark = pytest.mark.integration

def define(sku: str) -> list[str]:
    """A generalized definition; the disk published here is random pieces, no guest OS the audit can read,
    so publishes give --allow-unaudited."""
    return ["--publisher", "p", "--offer", "o", "--sku", sku, "--os-type", "linux", "--os-state", "generalized"]


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    require_tools("qemu-img")
    cli = Cli(tmp_path / "home")
    disk = write_raw(tmp_path / "os.raw", 4 << 20, random_pieces(random.Random(7), 4 << 20, 4))
    key = tmp_path / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", *define("d"))
    cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    return {"cli": cli, "disk": disk, "key": key, "root": tmp_path}


def test_home_works_after_the_command_as_before_it(world: dict[str, Any]) -> None:
    cli, other = world["cli"], world["root"] / "other"
    for argv in (["--home", str(other), "gallery", "create", "before"],
                 ["gallery", "create", "after", "--home", str(other)],
                 ["gallery", "create", "equals", f"--home={other}", "--json"]):
        cli(*argv)
    assert sorted(g["name"] for g in cli.json("gallery", "list", "--home", str(other))) == \
        ["after", "before", "equals"]
    assert [g["name"] for g in cli.json("gallery", "list")] == ["g"]  # IMGTOOL_HOME's


def test_vhd_is_the_name_of_vpc_and_foreign_formats_are_to_be_converted(world: dict[str, Any]) -> None:
    cli, root = world["cli"], world["root"]
    vhd = root / "disk.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(world["disk"]), str(vhd)], check=True)
    for name in ("vhd", "VHD", "vpc"):
        assert cli.json("capture", str(vhd), "--format", name)["digest"].startswith("blake3:")
    wrong = cli("capture", str(vhd), "--format", "qcow2", ok=False)
    assert wrong.returncode == 2 and "the bytes say vpc" in wrong.stderr
    parallels = root / "disk.hdd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "parallels", str(parallels), "8M"], check=True)
    refused = cli("capture", str(parallels), ok=False)
    assert refused.returncode == 5 and "Parallels" in refused.stderr
    assert "convert it to qcow2" in refused.stderr and "flatten" not in refused.stderr


def test_revoked_is_one_object_in_vm_list_and_vm_show(world: dict[str, Any]) -> None:
    cli = world["cli"]
    cli("vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(world["key"]))
    assert cli.json("vm", "list")[0]["revoked"] is None
    cli("version", "revoke", "g/d@1.0.0", "--reason", "CVE-2026-1 in openssl")
    listed = cli.json("vm", "list")[0]["revoked"]
    shown = cli.json("vm", "show", "web")["revoked"]
    assert listed == shown and set(listed) == {"reason", "when"} and listed["reason"] == "CVE-2026-1 in openssl"
    text = cli("vm", "show", "web").stdout
    assert "revoked: revoked" not in text and f"CVE-2026-1 in openssl (since {listed['when']})" in text
    assert f"web: revoked since {listed['when']}: CVE-2026-1 in openssl" in cli("vm", "list").stdout


def test_vm_delete_says_which_snapshots_went_with_it(world: dict[str, Any]) -> None:
    cli = world["cli"]
    for name in ("a", "b"):
        cli("vm", "new", name, "--image", "g/d@1.0.0", "--ssh-key", str(world["key"]))
    cli("vm", "snapshot", "create", "a", "s1")
    cli("vm", "snapshot", "create", "a", "s2")
    assert cli("vm", "delete", "a").stdout.strip() == "deleted VM a and its 2 snapshots (s1, s2)"
    assert cli.json("vm", "delete", "b") == {"deleted": "b", "snapshots_deleted": []}


def test_latest_that_picks_nothing_says_why(world: dict[str, Any]) -> None:
    cli = world["cli"]
    cli("definition", "create", "g/checked", *define("checked"), "--require-boot-check")
    cli("publish", "g/checked", "--version", "2.0.0", "--os-disk", str(world["disk"]), "--allow-unaudited")
    held = cli("vm", "new", "x", "--image", "g/checked@latest", "--ssh-key", str(world["key"]), ok=False)
    assert held.returncode == 3, held.stderr
    assert "g/checked@latest picks nothing: every version is dropped: 2.0.0 boot check pending" in held.stderr
    assert "imgtool version check g/checked@2.0.0" in held.stderr
    cli("definition", "create", "g/empty", *define("empty"))
    empty = cli("version", "show", "g/empty@latest", ok=False)
    assert empty.returncode == 3 and "g/empty@latest picks nothing: it has no versions" in empty.stderr
    assert "imgtool publish g/empty --version 1.0.0" in empty.stderr
    typo = cli("version", "show", "g/dd@latest", ok=False)
    assert typo.returncode == 3 and "latest" not in typo.stderr.splitlines()[0], typo.stderr


def test_promoting_a_failed_version_warns(world: dict[str, Any]) -> None:
    from imgtool.gallery.lifecycle_model import CheckResult
    from imgtool.gallery.version_changes import update_version
    from imgtool.home import Home

    cli = world["cli"]
    cli("definition", "create", "g/checked", *define("checked"), "--require-boot-check")
    cli("publish", "g/checked", "--version", "1.0.0", "--os-disk", str(world["disk"]), "--allow-unaudited")
    cli("publish", "g/checked", "--version", "1.1.0", "--os-disk", str(world["disk"]), "--allow-unaudited")
    update_version(Home.at(cli.home), "g/checked@1.1.0",
                   check=CheckResult("failed", "console:READY", "2026-01-01T00:00:00Z", 60000, "no READY"))
    pending = cli("version", "update", "g/checked@1.0.0", "--promote")
    assert "warning" not in pending.stderr
    failed = cli("version", "update", "g/checked@1.1.0", "--promote", "--json")
    assert "imgtool: warning: g/checked@1.1.0 failed its boot check" in failed.stderr
    assert "did not boot" in failed.stderr


def test_an_unreachable_registry_is_named_and_retries_show_on_a_terminal(tmp_path: Path) -> None:
    import os
    import sys

    from imgtool.tools.ports import free_port

    cli = Cli(tmp_path / "home")
    port = free_port()  # nothing listens there: every connection is refused
    cli("remote", "add", "dead", f"http://127.0.0.1:{port}/x", "--insecure")
    piped = cli("remote", "versions", "dead:g/d", ok=False)
    assert piped.returncode == 12
    assert f"dead (127.0.0.1:{port}) could not be reached: the connection was refused" in piped.stderr
    assert "Error" not in piped.stderr and "trying again" not in piped.stderr
    primary, secondary = os.openpty()  # stderr on a terminal: each retry is said as it happens
    try:
        done = subprocess.run([sys.executable, "-m", "imgtool", "remote", "versions", "dead:g/d"],
                              env={**os.environ, "IMGTOOL_HOME": str(cli.home)}, stdout=subprocess.PIPE,
                              stderr=secondary, check=False, timeout=120)
        os.close(secondary)
        seen = b""
        while chunk := _read_pty(primary):
            seen += chunk
    finally:
        os.close(primary)
    text = seen.decode()
    assert done.returncode == 12
    said = [line for line in text.splitlines() if "trying again in" in line]
    assert len(said) == 4 and all(f"dead (127.0.0.1:{port}): the connection was refused" in line for line in said)


def _read_pty(fd: int) -> bytes:
    import os

    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the writer is gone and everything was read
        return b""
