"""VMs' disks through the real command line, with real overlays made by qemu-img (no boot):
publishing from a VM brings all its disks and `LUN=vm:VM` takes the VM's data disk (issue 9's
wrong results), --disk-size grows the OS overlay and such a VM can be captured, snapshots
list/restore/delete, vm update, and exports (format from the extension, no silent overwrite, modes)."""

from __future__ import annotations

import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.images import MiB, qemu_io
from tests.reliability.harness import fake_ssh_key, random_pieces, write_raw

pytestmark = pytest.mark.integration

# The disks are random pieces, no guest OS the audit can read: publishes give --allow-unaudited.
DEFINE = ["--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux", "--os-state", "generalized",
          "--min-vcpus", "1", "--max-vcpus", "4", "--min-memory", "128", "--max-memory", "2048"]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    require_tools("qemu-img", "qemu-io")
    cli = Cli(tmp_path / "home")
    os_raw = write_raw(tmp_path / "os.raw", 4 * MiB, random_pieces(random.Random(1), 4 * MiB, 4))
    data_raw = write_raw(tmp_path / "data.raw", 2 * MiB, random_pieces(random.Random(2), 2 * MiB, 2))
    (tmp_path / "id.pub").write_text(fake_ssh_key() + "\n")
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", *DEFINE)
    cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(os_raw), "--allow-unaudited",
        "--data-disk", f"0={data_raw}")
    cli("vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(tmp_path / "id.pub"), "--disk-size", "8M")
    return cli


def disks(cli: Cli, ref: str) -> dict[int | None, dict[str, object]]:
    version = cli.json("version", "show", ref)
    assert isinstance(version, dict)
    return {d["lun"]: d for d in version["disks"]}


def overlay(cli: Cli, name: str) -> Path:
    return cli.home / "vms" / "web" / name


def read_pattern(path: Path, pattern: int, offset: str, length: str) -> bool:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"read -P {pattern} {offset} {length}", str(path)],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def test_publishing_a_vm_brings_every_disk_and_lun_sources_take_data_disks(cli: Cli, tmp_path: Path) -> None:
    qemu_io(overlay(cli, "disk-lun0.qcow2"), "qcow2", "write -P 0x5a 0 64k")  # the guest changed its data disk
    qemu_io(overlay(cli, "disk-os.qcow2"), "qcow2", "write -P 0x33 6M 64k")  # beyond the base: grown disk
    cli("publish", "g/d", "--version", "1.1.0", "--os-disk", "vm:web", "--allow-unaudited", "--os-state", "generalized")
    got = disks(cli, "g/d@1.1.0")
    assert sorted(got, key=str) == [0, None]  # the data disk was not dropped
    assert got[None]["virtual_size"] == 8 * MiB  # the grown OS disk
    assert got[0]["digest"] != disks(cli, "g/d@1.0.0")[0]["digest"]  # LUN 0 is the VM's, changed
    out = tmp_path / "lun0.qcow2"
    cli("version", "export", "g/d@1.1.0", str(out), "--disk", "0")
    assert read_pattern(out, 0x5A, "0", "64k")

    # --data-disk 0=vm:web is web's LUN 0, never its OS disk
    cli("publish", "g/d", "--version", "1.2.0", "--os-disk", str(tmp_path / "os.raw"), "--allow-unaudited",
        "--data-disk", "0=vm:web")
    assert disks(cli, "g/d@1.2.0")[0]["digest"] == got[0]["digest"]
    # and a clash with what the OS source brings is refused, unless asked
    refused = cli("publish", "g/d", "--version", "1.3.0", "--os-disk", "vm:web", "--os-state", "generalized",
                  "--data-disk", f"0={tmp_path / 'data.raw'}", ok=False)
    assert refused.returncode == 2 and "--replace-data-disks" in refused.stderr
    cli("publish", "g/d", "--version", "1.3.0", "--os-disk", "vm:web", "--allow-unaudited", "--os-state", "generalized",
        "--data-disk", f"0={tmp_path / 'data.raw'}", "--replace-data-disks")
    assert disks(cli, "g/d@1.3.0")[0]["digest"] == disks(cli, "g/d@1.0.0")[0]["digest"]
    cli("publish", "g/d", "--version", "1.4.0", "--os-disk", "vm:web:os", "--allow-unaudited",
        "--os-state", "generalized")
    assert list(disks(cli, "g/d@1.4.0")) == [None]


def test_snapshots_list_restore_delete(cli: Cli) -> None:
    qemu_io(overlay(cli, "disk-os.qcow2"), "qcow2", "write -P 0x11 0 64k")
    cli("vm", "snapshot", "create", "web", "s1")
    qemu_io(overlay(cli, "disk-os.qcow2"), "qcow2", "write -P 0x22 0 64k")
    listed = cli.json("vm", "snapshot", "list", "web")
    assert isinstance(listed, list) and [s["name"] for s in listed] == ["s1"]
    assert listed[0]["ref"] == "snapshot:web/s1" and len(listed[0]["disks"]) == 2
    cli("vm", "snapshot", "restore", "web", "s1")
    assert read_pattern(overlay(cli, "disk-os.qcow2"), 0x11, "0", "64k")
    cli("capture", "snapshot:web/s1:0")  # the selector grammar works for capture too
    cli("vm", "snapshot", "delete", "web", "s1")
    assert cli.json("vm", "snapshot", "list", "web") == []
    gone = cli("vm", "snapshot", "restore", "web", "s1", ok=False)
    assert gone.returncode == 3 and "vm snapshot list web" in gone.stderr


def test_vm_update_changes_a_stopped_vm_within_the_recommendation(cli: Cli) -> None:
    cli("vm", "update", "web", "--cpus", "3", "--memory", "1024")
    shown = cli.json("vm", "show", "web")
    assert isinstance(shown, dict) and (shown["cpus"], shown["memory_mib"]) == (3, 1024)
    refused = cli("vm", "update", "web", "--memory", "4096", ok=False)
    assert refused.returncode == 5 and "recommended range" in refused.stderr
    cli("vm", "update", "web", "--memory", "4096", "--ignore-recommendations")


def test_vm_new_says_what_the_vm_got_and_warns(cli: Cli, tmp_path: Path) -> None:
    done = cli("vm", "new", "two", "--image", "g/d@1.0.0", "--ssh-key", str(tmp_path / "id.pub"),
               "--forward", "18080:80", "--cpus", "1", "--memory", "256")
    assert "1 vCPUs, 256 MiB memory, OS disk 4.0 MiB, 1 data disk" in done.stdout
    assert "forward 127.0.0.1:18080->80" in done.stdout and "login: user" in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines() if str(tmp_path) not in line)
    cli("version", "update", "g/d@1.0.0", "--end-of-life", "2001-01-01")
    old = cli("vm", "new", "three", "--image", "g/d@1.0.0", "--ssh-key", str(tmp_path / "id.pub"))
    assert "warning: version g/d@1.0.0 reached its end of life on 2001-01-01" in old.stderr
    nobody = Cli(cli.home, env={"HOME": str(tmp_path / "empty-home")})("vm", "new", "four", "--image", "g/d@1.0.0")
    assert "warning: nobody can log in to VM 'four'" in nobody.stderr


def test_a_relative_ssh_key_is_kept_absolute(cli: Cli, tmp_path: Path) -> None:
    Cli(cli.home, cwd=tmp_path)("vm", "new", "rel", "--image", "g/d@1.0.0", "--ssh-key", "id.pub")
    shown = cli.json("vm", "show", "rel")  # from another folder, the key is still found
    assert isinstance(shown, dict) and shown["seed"]["ssh_key"] == str(tmp_path / "id.pub")


def test_broken_cloud_config_user_data_is_refused_with_its_line(cli: Cli, tmp_path: Path) -> None:
    broken = tmp_path / "user-data"
    broken.write_text("#cloud-config\npackages:\n  - nginx\n runcmd: [ls\n")
    refused = cli("vm", "new", "bad", "--image", "g/d@1.0.0", "--ssh-key", str(tmp_path / "id.pub"),
                  "--user-data", str(broken), ok=False)
    assert refused.returncode == 2 and "not valid #cloud-config YAML at line 4" in refused.stderr
    assert "Traceback" not in refused.stderr and not (cli.home / "vms" / "bad").exists()


def test_exports_take_the_format_from_the_extension_and_never_overwrite(cli: Cli, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        for name, fmt in (("a.qcow2", "QEMU QCOW"), ("a.raw", None), ("a.img", None)):
            cli("version", "export", "g/d@1.0.0", str(tmp_path / name))
            head = (tmp_path / name).read_bytes()[:4]
            assert (head == b"QFI\xfb") == (fmt is not None), name
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name  # 0666 less the umask
        assert "mode 0666 less the umask" in cli("version", "export", "--help").stdout  # as the help says
    finally:
        os.umask(old)
    again = cli("version", "export", "g/d@1.0.0", str(tmp_path / "a.qcow2"), ok=False)
    assert again.returncode == 4 and "--force" in again.stderr
    cli("version", "export", "g/d@1.0.0", str(tmp_path / "a.qcow2"), "--disk", "0", "--force")
    unknown = cli("version", "export", "g/d@1.0.0", str(tmp_path / "a.vhdx"), ok=False)
    assert unknown.returncode == 2 and "--format" in unknown.stderr
