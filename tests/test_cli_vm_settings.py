"""Changing a stopped VM after vm new, through the real command line and real qemu-img overlays (no
boot): vm update --forward/--no-forwards, growing the OS disk (vm resize, vm update --disk-size),
shrinking refused, a snapshot restore puts the receipt's size back with the disk, and the address and
ports in vm show. The running side (and vm ssh-config) is in tests/test_vm_settings_boot.py."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.images import MiB
from tests.reliability.harness import fake_ssh_key, random_pieces, write_raw
from tests.test_cli_vm_disks import DEFINE

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    require_tools("qemu-img")
    cli = Cli(tmp_path / "home")
    os_raw = write_raw(tmp_path / "os.raw", 4 * MiB, random_pieces(random.Random(1), 4 * MiB, 4))
    (tmp_path / "id.pub").write_text(fake_ssh_key() + "\n")
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", *DEFINE)
    cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(os_raw), "--allow-unaudited")
    cli("vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", str(tmp_path / "id.pub"), "--forward", "8080:80")
    return cli


def overlay_size(cli: Cli) -> int:
    done = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(cli.home / "vms" / "web" / "disk-os.qcow2")],
                          capture_output=True, text=True, check=True)
    return int(json.loads(done.stdout)["virtual-size"])


def shown(cli: Cli) -> dict[str, object]:
    value = cli.json("vm", "show", "web")
    assert isinstance(value, dict)
    return value


def test_forwards_are_replaced_and_removed_on_a_stopped_vm(cli: Cli) -> None:
    cli("vm", "update", "web", "--forward", "8443:443", "--forward", "9000:9000")
    assert shown(cli)["forwards"] == [{"host": 8443, "guest": 443}, {"host": 9000, "guest": 9000}]
    assert shown(cli)["ports"] == [{"host": None, "guest": 22, "purpose": "ssh"},
                                   {"host": 8443, "guest": 443, "purpose": "forward"},
                                   {"host": 9000, "guest": 9000, "purpose": "forward"}]
    assert shown(cli)["address"] is None  # stopped: nothing listens
    text = cli("vm", "show", "web").stdout
    assert "127.0.0.1:8443->443" in text and "none while stopped" in text

    done = cli("vm", "update", "web", "--no-forwards")
    assert "none besides SSH" in done.stdout
    assert shown(cli)["forwards"] == []

    # the rules of vm new, checked before anything changes
    for bad, why in ((["--forward", "80:80"], "not HOST:GUEST"), (["--forward", "8080:22"], "port 22"),
                     (["--forward", "8080:80", "--forward", "8080:81"], "more than once"),
                     (["--forward", "8080:80", "--no-forwards"], "contradict"), ([], "nothing to update")):
        refused = cli("vm", "update", "web", *bad, "--memory", "256", ok=False) if bad else \
            cli("vm", "update", "web", ok=False)
        assert refused.returncode == 2 and why in refused.stderr, refused.stderr
    assert shown(cli)["memory_mib"] == 512  # nothing was applied by a refused update


def test_the_os_disk_grows_and_never_shrinks(cli: Cli) -> None:
    assert overlay_size(cli) == 4 * MiB
    done = cli("vm", "resize", "web", "--disk-size", "64M")
    assert "64.0 MiB" in done.stdout or "64 MiB" in done.stdout, done.stdout
    assert overlay_size(cli) == 64 * MiB
    disks = shown(cli)["disks"]
    assert isinstance(disks, list) and disks[0]["virtual_size"] == 64 * MiB

    refused = cli("vm", "resize", "web", "--disk-size", "32M", ok=False)
    assert refused.returncode == 2 and "only grows" in refused.stderr and "64M" in refused.stderr
    assert overlay_size(cli) == 64 * MiB
    assert cli("vm", "update", "web", "--disk-size", "1x", ok=False).returncode == 2

    cli("vm", "snapshot", "create", "web", "small")
    cli("vm", "update", "web", "--disk-size", "128M")
    assert overlay_size(cli) == 128 * MiB
    # a VM grown from a grown disk can still be published: the overlay is a real qcow2 of that size
    cli("publish", "g/d", "--version", "1.1.0", "--os-disk", "vm:web", "--allow-unaudited", "--os-state", "generalized")
    version = cli.json("version", "show", "g/d@1.1.0")
    assert isinstance(version, dict) and version["disks"][0]["virtual_size"] == 128 * MiB

    cli("vm", "snapshot", "restore", "web", "small")  # the disk goes back, and the receipt with it
    assert overlay_size(cli) == 64 * MiB
    disks = shown(cli)["disks"]
    assert isinstance(disks, list) and disks[0]["virtual_size"] == 64 * MiB


def test_a_missing_vm_is_named(cli: Cli) -> None:
    for argv in (["vm", "resize", "nope", "--disk-size", "1G"], ["vm", "update", "nope", "--forward", "8080:80"],
                 ["vm", "ssh-config", "nope"]):
        done = cli(*argv, ok=False)
        assert done.returncode == 3 and "VM 'nope' does not exist" in done.stderr


def test_ssh_config_of_a_stopped_vm_says_why_not(cli: Cli) -> None:
    done = cli("vm", "ssh-config", "web", ok=False)
    assert done.returncode == 5 and "not running" in done.stderr and "imgtool vm start web" in done.stderr
    every = cli("vm", "ssh-config", ok=False)  # every running VM: there is none
    assert every.returncode == 5 and "no VM is running" in every.stderr


def test_openssh_reads_the_ssh_config_block_as_meant(tmp_path: Path) -> None:
    from imgtool.vm.ssh_config import SshHost, render

    require_tools("ssh")
    key = tmp_path / "my keys" / "id_ed25519"
    host = SshHost(name="web", port=40222, user="me", identity=key, known_hosts=tmp_path / "vm" / "known_hosts")
    config = tmp_path / "config"
    config.write_text(render(host))
    done = subprocess.run(["ssh", "-G", "-F", str(config), "web"], capture_output=True, text=True, check=True)
    seen: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key_name, _, value = line.partition(" ")
        seen.setdefault(key_name, value)
    assert seen["hostname"] == "127.0.0.1" and seen["port"] == "40222" and seen["user"] == "me"
    assert seen["identityfile"] == str(key)  # a path with a space survives the quoting
    assert seen["userknownhostsfile"] == str(tmp_path / "vm" / "known_hosts")
    assert seen["stricthostkeychecking"] in ("yes", "true")
    assert seen["hostkeyalias"] == "imgtool-vm-web"
    assert not host.key_recorded()
    host.known_hosts.parent.mkdir()
    host.known_hosts.write_text("imgtool-vm-web ssh-ed25519 AAAA\n")
    assert host.key_recorded()
