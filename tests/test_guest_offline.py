"""Audit and offline generalization on real disks, without booting: a partitioned disk whose ext4 root
(made with mkfs.ext4 -d) carries a provisioned machine's identity, read and edited by the real
qemu-storage-daemon (FUSE export of the VM's qcow2 overlay) and debugfs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools

pytestmark = pytest.mark.integration
MiB = 1 << 20
ROOT_START = 2048  # sectors


def _guest_tree(root: Path) -> None:
    files = {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/os-release": 'PRETTY_NAME="Testix 1.0"\nID=testix\n',
        "etc/ssh/ssh_host_ed25519_key": "PRIVATE\n",
        "etc/ssh/ssh_host_ed25519_key.pub": "ssh-ed25519 AAAA host\n",
        "etc/ssh/sshd_config": "PermitRootLogin no\n",
        "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nadmin:x:1000:1000::/home/admin:/bin/sh\n",
        "etc/shadow": "root:*:19000:0:99999:7:::\nadmin:!:19000:0:99999:7:::\n",
        "etc/group": "root:x:0:\nsudo:x:27:admin\nadmin:x:1000:\n",
        "etc/gshadow": "root:*::\nsudo:*::admin\nadmin:!::\n",
        "etc/sudoers.d/90-cloud-init-users": "admin ALL=(ALL) NOPASSWD:ALL\n",
        "var/lib/cloud/instances/iid-1/boot-finished": "done\n",
        "var/lib/cloud/data/instance-id": "iid-1\n",
        "var/lib/dhcp/dhclient.eth0.leases": "lease {}\n",
        "var/log/syslog": "boot\n",
        "var/log/journal/abc/system.journal": "journal\n",
        "home/admin/.bash_history": "sudo ls\n",
        "home/admin/.ssh/authorized_keys": "ssh-ed25519 AAAA admin\n",
        "root/.bash_history": "ls\n",
        "boot/vmlinuz-6.1.0-test": "kernel\n",
    }
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "var/lib/cloud/instance").symlink_to("/var/lib/cloud/instances/iid-1")
    (root / "etc/machine-id").chmod(0o444)


def make_guest_disk(tmp: Path, *, size_mib: int = 64) -> Path:
    """An MBR disk with BIOS boot code and one ext4 partition holding a provisioned guest."""
    require_tools("mkfs.ext4", "sfdisk", "debugfs", "qemu-storage-daemon", "qemu-img")
    tree = tmp / "tree"
    _guest_tree(tree)
    part = tmp / "root.ext4"
    part_mib = size_mib - 2
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(part), f"{part_mib}M"], check=True)
    disk = tmp / "guest.raw"
    with open(disk, "wb") as handle:
        handle.truncate(size_mib * MiB)
    table = f"label: dos\nunit: sectors\nstart={ROOT_START}, size={part_mib * 2048}, type=83, bootable\n"
    subprocess.run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)], input=table.encode(),
                   check=True, capture_output=True)
    with open(disk, "r+b") as handle:
        handle.write(b"\xeb\x63\x90")  # boot code: the disk claims BIOS boot
        handle.seek(ROOT_START * 512)
        handle.write(part.read_bytes())
    return disk


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path / "home")
    cli("gallery", "create", "lab")
    for state in ("generalized", "specialized"):
        cli("definition", "create", f"lab/{state[:4]}", "--publisher", "t", "--offer", "o", "--sku", state,
            "--os-type", "linux", "--os-state", state)
    return cli


def _checks(body: dict[str, object]) -> set[str]:
    findings = body["findings"]
    assert isinstance(findings, list)
    return {f["check"] for f in findings}


def test_audit_finds_identity_in_a_disk_file(cli: Cli, tmp_path: Path) -> None:
    disk = make_guest_disk(tmp_path)
    done = cli("--json", "audit", str(disk), ok=False)
    assert done.returncode == 5, done.stderr
    body = json.loads(done.stdout)
    assert body["audited"] and not body["clean"]
    assert _checks(body) == {"machine_id", "ssh_host_keys", "cloud_init_state", "authorized_keys",
                             "shell_history", "dhcp_leases", "logs"}
    facts = body["facts"]
    assert facts["os"] == "Testix 1.0"
    assert facts["kernels"] == ["vmlinuz-6.1.0-test"]
    assert facts["partition_table"] == "mbr" and facts["root_partition"] == 1
    assert facts["boot_modes"] == ["bios"]
    assert 0 < facts["fs_free"] < facts["fs_size"]
    human = cli("audit", str(disk), ok=False).stdout
    assert "identity found" in human and "ssh_host_keys" in human


def test_a_disk_without_ext_root_is_not_audited(cli: Cli, tmp_path: Path) -> None:
    require_tools("mkfs.fat")
    disk = tmp_path / "fat.raw"
    subprocess.run(["mkfs.fat", "-C", str(disk), "8192"], check=True, capture_output=True)
    done = cli("--json", "audit", str(disk), ok=False)
    assert done.returncode == 9
    body = json.loads(done.stdout)
    assert body["audited"] is False and body["clean"] is False
    assert "no ext2/3/4 root file system" in body["reason"]


def test_a_guest_os_the_audit_cannot_read_is_refused_unless_allowed_and_recorded(cli: Cli, tmp_path: Path) -> None:
    require_tools("mkfs.fat")
    disk = tmp_path / "fat.raw"
    subprocess.run(["mkfs.fat", "-C", str(disk), "8192"], check=True, capture_output=True)
    refused = cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), ok=False)
    assert refused.returncode == 5 and "could not be audited" in refused.stderr and "vfat" in refused.stderr
    assert "--allow-unaudited" in refused.stderr and "Traceback" not in refused.stderr
    assert cli.json("version", "list", "lab/gene") == []  # nothing published
    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    audit = cli.json("version", "show", "lab/gene@1.0.0")["audit"]  # type: ignore[index]
    assert audit["audited"] is False and audit["allowed_unaudited"] is True and not audit["allowed_identity"]
    assert "not audited, published with --allow-unaudited" in cli("version", "show", "lab/gene@1.0.0").stdout
    # Disks showing no layout at all (raw data, all zeros): tests/test_audit_blank.py.


def test_publish_refuses_identity_then_offline_generalize_makes_it_clean(cli: Cli, tmp_path: Path) -> None:
    disk = make_guest_disk(tmp_path)
    refused = cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), ok=False)
    assert refused.returncode == 5
    assert "not generalized" in refused.stderr and "--allow-identity" in refused.stderr

    # The provisioned machine lives on as a specialized image; a VM from it gets offline-generalized.
    cli("publish", "lab/spec", "--version", "1.0.0", "--os-disk", str(disk))
    cli("vm", "new", "box", "--image", "lab/spec")
    assert cli("audit", "vm:box", ok=False).returncode == 5
    assert cli("audit", "vm:box:os", ok=False).returncode == 5  # the OS disk, selected explicitly
    assert cli("audit", "vm:box:3", ok=False).returncode == 3  # no data disk at LUN 3
    refused_admin = cli("vm", "generalize", "box", "--remove-admin", ok=False)
    assert refused_admin.returncode == 5  # a specialized VM has no provisioned admin to remove
    pinned = cli.home / "vms" / "box" / "known_hosts"
    pinned.write_text("[imgtool-box]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOld\n")  # what vm ssh remembered
    done = cli.json("vm", "generalize", "box")
    assert not pinned.exists()  # the host keys were removed: the new ones must not be refused
    assert isinstance(done, dict)
    removed = set(done["removed"])
    assert {"/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/machine-id (emptied)",
            "/var/lib/cloud/instances/", "/var/lib/cloud/instance", "/var/lib/cloud/data/",
            "/var/lib/dhcp/dhclient.eth0.leases", "/var/log/syslog", "/var/log/journal/abc/system.journal",
            "/root/.bash_history", "/home/admin/.bash_history"} <= removed
    assert done["mode"] == "offline"

    body = cli.json("audit", "vm:box")
    assert isinstance(body, dict)
    assert body["clean"] and _checks(body) == {"authorized_keys"}  # the user stays without --remove-admin
    assert cli.json("vm", "show", "box")["generalized"] is True  # type: ignore[index]
    start = cli("vm", "start", "box", ok=False)
    assert start.returncode == 5 and "--force" in start.stderr

    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", "vm:box", "--os-state", "generalized")
    shown = cli.json("version", "show", "lab/gene@1.0.0")
    assert isinstance(shown, dict)
    assert shown["audit"]["clean"] and shown["audit"]["source"] == "vm:box"
    assert not shown["audit"]["allowed_identity"]
    assert "clean; Testix 1.0" in cli("version", "show", "lab/gene@1.0.0").stdout
    # Stored versions are audited through their base: the generalized one is clean, its source was not.
    assert cli.json("audit", "lab/gene@1.0.0")["clean"] is True  # type: ignore[index]
    assert cli("audit", "lab/spec@1.0.0", ok=False).returncode == 5
    digest = shown["disks"][0]["digest"]
    assert cli.json("audit", digest)["clean"] is True  # type: ignore[index]
    # The guest's other files are untouched and the edited file system is consistent.
    exported = tmp_path / "out.raw"
    cli("version", "export", "lab/gene@1.0.0", str(exported), "--format", "raw")
    check = subprocess.run(["e2fsck", "-fn", f"{exported}?offset={ROOT_START * 512}"], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    cat = subprocess.run(["debugfs", "-R", "cat /etc/ssh/sshd_config", f"{exported}?offset={ROOT_START * 512}"],
                         capture_output=True, text=True, check=True)
    assert cat.stdout == "PermitRootLogin no\n"
    mid = subprocess.run(["debugfs", "-R", "stat /etc/machine-id", f"{exported}?offset={ROOT_START * 512}"],
                         capture_output=True, text=True, check=True)
    assert "Size: 0" in mid.stdout and "Mode:  0444" in mid.stdout


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_generalize_a_file_offline_then_publish_it(cli: Cli, tmp_path: Path, fmt: str) -> None:
    disk = make_guest_disk(tmp_path)
    if fmt == "qcow2":
        converted = tmp_path / "guest.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(converted)], check=True)
        disk = converted
    refused = cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), ok=False)
    assert refused.returncode == 5 and f"hint: imgtool generalize {disk} (then publish again)" in refused.stderr
    done = cli.json("generalize", str(disk))
    assert isinstance(done, dict) and done["file"] == str(disk) and done["mode"] == "offline"
    assert {"/etc/ssh/ssh_host_ed25519_key", "/etc/machine-id (emptied)", "/var/lib/cloud/data/",
            "/var/log/syslog", "/root/.bash_history"} <= set(done["removed"])
    assert cli.json("audit", str(disk))["clean"] is True  # type: ignore[index]
    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk))
    again = cli("generalize", str(disk))
    assert "nothing to remove" in again.stdout
    assert cli("generalize", str(tmp_path / "nope.raw"), ok=False).returncode == 2
    assert cli("generalize", "vm:box", ok=False).returncode == 2


def test_allow_identity_is_recorded_and_remove_admin_edits_accounts(cli: Cli, tmp_path: Path) -> None:
    disk = make_guest_disk(tmp_path)
    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), "--allow-identity")
    shown = cli.json("version", "show", "lab/gene@1.0.0")
    assert isinstance(shown, dict)
    assert shown["audit"]["allowed_identity"] and not shown["audit"]["clean"]
    assert "published with --allow-identity" in cli("version", "show", "lab/gene@1.0.0").stdout

    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test\n")
    cli("vm", "new", "web", "--image", "lab/gene", "--admin-user", "admin", "--ssh-key", str(key))
    waited = cli("vm", "wait", "web", "--timeout", "5", ok=False)
    assert waited.returncode == 5 and "not running" in waited.stderr and "vm start web" in waited.stderr
    done = cli.json("vm", "generalize", "web", "--remove-admin")
    assert isinstance(done, dict)
    assert {"user admin (account, group, home)", "/home/admin/", "/etc/sudoers.d/90-cloud-init-users"} \
        <= set(done["removed"])
    body = cli.json("audit", "vm:web")
    assert isinstance(body, dict)
    assert body["clean"] and body["findings"] == []
    exported = tmp_path / "web.qcow2"
    cli("publish", "lab/gene", "--version", "1.0.1", "--os-disk", "vm:web", "--os-state", "generalized")
    cli("version", "export", "lab/gene@1.0.1", str(exported), "--format", "raw")
    device = f"{exported}?offset={ROOT_START * 512}"
    for path, expected in (("/etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("/etc/group", "root:x:0:\nsudo:x:27:\n"), ("/etc/gshadow", "root:*::\nsudo:*::\n")):
        cat = subprocess.run(["debugfs", "-R", f"cat {path}", device], capture_output=True, text=True, check=True)
        assert cat.stdout == expected, path
    shadow = subprocess.run(["debugfs", "-R", "stat /etc/passwd", device], capture_output=True, text=True,
                            check=True)
    assert "Mode:  0644" in shadow.stdout and "User:     0" in shadow.stdout


def test_online_generalize_also_removes_what_the_guest_wrote_while_powering_off(cli: Cli, tmp_path: Path) -> None:
    from imgtool.guest import generalize
    from imgtool.home import Home

    # The disk as an online generalize leaves it once the guest is off: the script's removals done, and
    # the journal (here with everything else the fixture carries) written again during power-off.
    cli("publish", "lab/spec", "--version", "1.0.0", "--os-disk", str(make_guest_disk(tmp_path)))
    cli("vm", "new", "box", "--image", "lab/spec")
    done = generalize.after_poweroff(Home.at(cli.home), "box", ("/etc/ssh/ssh_host_ed25519_key",))
    assert done.mode == "online" and done.removed[0] == "/etc/ssh/ssh_host_ed25519_key"
    assert "/var/log/journal/abc/system.journal (written during power-off)" in done.removed
    body = cli.json("audit", "vm:box")
    assert isinstance(body, dict) and body["clean"] and "logs" not in _checks(body)
