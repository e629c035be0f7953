"""Warm starts of the real Debian 12 guest (scripts/build-debian-image) and its agent
(scripts/debian/imgtool-agent): one `version warm` (a template boot until cloud-init is done), then two
VMs restored from that one state, each given its own admin key.

Proved over SSH, through the host key the host made and pinned (StrictHostKeyChecking=yes): each VM
has its own hostname, machine-id, host key and cloud-init instance; the RNG output the user-data read
right after the reseed differs; each admin key opens only its own VM; the template's user is gone.
A third restore whose user-data the agent cannot apply is deleted, with the agent's reason. Then one
cold boot: a warm VM stopped and started keeps the identity the agent gave it.
The template boot under TCG is most of the time; each warm VM takes seconds.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.realguest.test_debian import ADMIN, WAIT

pytestmark = [pytest.mark.realguest, pytest.mark.integration, pytest.mark.boot]
SIZE = ("--cpus", "1", "--memory", "1024")
# Run by the agent once it has reseeded the RNG, before it answers: the bytes any process would read first.
USER_DATA = """#cloud-config
write_files:
  - path: /etc/imgtool-warm-test
    content: written by the agent
    permissions: '0600'
runcmd:
  - head -c 4096 /dev/urandom | sha256sum | cut -c1-64 > /var/tmp/first-random
"""


@pytest.fixture(scope="module")
def cli(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    cli = Cli(tmp_path_factory.mktemp("home") / "home", env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/deb", "--publisher", "debian", "--offer", "debian-12", "--sku", "warm",
        "--os-type", "linux", "--os-state", "generalized", "--min-memory", "512")
    cli("publish", "lab/deb", "--version", "1.0.0", "--os-disk", str(image))
    started = time.monotonic()
    made = cli.json("version", "warm", "lab/deb@1.0.0", *SIZE, "--timeout", WAIT)
    assert isinstance(made, dict) and made["warm"]["bytes"] > 0
    print(f"\nversion warm: {time.monotonic() - started:.0f}s (TCG), state {made['warm']['bytes'] >> 20} MiB")
    yield cli
    for vm in ("wa", "wb"):
        cli("vm", "delete", vm, ok=False)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    for vm in ("wa", "wb"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", vm, "-f", str(folder / vm)], check=True)
    return {vm: folder / vm for vm in ("wa", "wb")}


def ssh(cli: Cli, vm: str, key: Path, command: str, *, user: str = ADMIN) -> subprocess.CompletedProcess[str]:
    """ssh with only `key`, checking the host key strictly against the one the host made and pinned."""
    port = str(cli.json("vm", "show", vm)["ssh_port"])  # type: ignore[index]
    argv = ["ssh", "-p", port, "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={cli.home / 'vms' / vm / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
            "-o", f"HostKeyAlias=imgtool-vm-{vm}", "-o", "ConnectTimeout=20", f"{user}@127.0.0.1", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def made(cli: Cli, keys: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    user_data = tmp_path_factory.mktemp("ud") / "user-data"
    user_data.write_text(USER_DATA)
    found = {}
    for vm, key in keys.items():
        started = time.monotonic()
        cli("vm", "new", vm, "--image", "lab/deb@1.0.0", *SIZE, "--warm", "--admin-user", ADMIN,
            "--ssh-key", f"{key}.pub", "--user-data", str(user_data), "--wait", "--wait-timeout", "120")
        print(f"\n{vm}: vm new --warm --wait {time.monotonic() - started:.1f}s (TCG)")
        done = ssh(cli, vm, key, "hostname; cat /etc/machine-id /var/lib/dbus/machine-id; "
                   "cat /etc/ssh/ssh_host_ed25519_key.pub; ls /etc/ssh | grep -c '^ssh_host_'; "
                   "cat /var/lib/cloud/data/instance-id /var/tmp/first-random; sudo cat /etc/imgtool-warm-test; echo; "
                   "getent passwd template || echo no-template; sudo ls /root/.ssh 2>&1 | grep -c 'No such'")
        assert done.returncode == 0, done.stderr
        names = ["hostname", "machine_id", "dbus_id", "host_key", "host_files", "instance", "random", "file",
                 "template", "root_keys_gone"]
        found[vm] = dict(zip(names, done.stdout.strip().splitlines(), strict=True))
    return found


def test_each_warm_vm_has_its_own_identity(cli: Cli, made: dict[str, dict[str, str]]) -> None:
    a, b = made["wa"], made["wb"]
    for vm, got in made.items():
        shown = cli.json("vm", "show", vm)
        assert isinstance(shown, dict)
        assert got["hostname"] == vm and got["machine_id"] == got["dbus_id"] and len(got["machine_id"]) == 32
        assert got["instance"] == shown["seed"]["instance_id"]
        pinned = (cli.home / "vms" / vm / "known_hosts").read_text().split()
        assert got["host_key"].split()[:2] == pinned[1:3]  # the key the host made, and only it
        assert got["host_files"] == "2"  # the template's ed25519 and ecdsa keys are gone
        assert got["file"] == "written by the agent" and got["template"] == "no-template"
        assert got["root_keys_gone"] == "1"
    assert a["machine_id"] != b["machine_id"] and a["host_key"] != b["host_key"] and a["instance"] != b["instance"]
    assert len(a["random"]) == 64 and a["random"] != b["random"]


def test_each_admin_key_opens_only_its_own_vm(cli: Cli, keys: dict[str, Path],
                                              made: dict[str, dict[str, str]]) -> None:
    assert ssh(cli, "wa", keys["wa"], "true").returncode == 0
    assert ssh(cli, "wb", keys["wb"], "true").returncode == 0
    refused = ssh(cli, "wa", keys["wb"], "true")
    assert refused.returncode == 255 and "Permission denied" in refused.stderr
    assert ssh(cli, "wb", keys["wa"], "true").returncode == 255
    assert ssh(cli, "wa", keys["wa"], "true", user="template").returncode == 255  # the template's user


def test_user_data_a_warm_start_cannot_apply_deletes_the_vm_with_the_reason(cli: Cli, keys: dict[str, Path],
                                                                          tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\npackages: [nginx]\n")
    failed = cli("vm", "new", "wc", "--image", "lab/deb@1.0.0", *SIZE, "--warm", "--admin-user", ADMIN,
                 "--ssh-key", f"{keys['wa']}.pub", "--user-data", str(user_data), ok=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "personalizing VM 'wc' failed, so it was deleted" in failed.stderr and "packages" in failed.stderr
    assert not (cli.home / "vms" / "wc").exists()
    assert cli("vm", "show", "wc", ok=False).returncode != 0


def test_a_warm_vm_started_again_boots_cold_and_keeps_its_identity(cli: Cli, keys: dict[str, Path],
                                                                   made: dict[str, dict[str, str]]) -> None:
    """The agent renamed cloud-init's instance to the VM's: the cold boot with the VM's own seed runs no
    per-instance module (no new host keys, which the pinned known_hosts would refuse), one more boot."""
    cli("vm", "stop", "wa", "--timeout", "120")
    cli("vm", "start", "wa")
    cli("vm", "wait", "wa", "--timeout", WAIT)
    done = ssh(cli, "wa", keys["wa"], "hostname; cat /etc/machine-id /etc/ssh/ssh_host_ed25519_key.pub; "
               "ls /var/lib/cloud/instances")
    assert done.returncode == 0, done.stderr
    hostname, machine_id, host_key, instances = done.stdout.strip().splitlines()
    before = made["wa"]
    assert (hostname, machine_id, host_key, instances) == ("wa", before["machine_id"], before["host_key"],
                                                           before["instance"])
