"""A real Debian 12 guest (scripts/build-debian-image) through the whole generalized/specialized life:

1. a VM from the generalized image boots and accepts SSH with the seeded key;
2. it is generalized online and published as a new generalized version (audit clean); a VM from that
   version boots with new host keys and a new machine-id, and the admin's key works;
3. publishing that booted, not generalized VM into a generalized definition is refused by the audit;
4. captured into a specialized definition instead, a VM from it boots with no seed and keeps the
   hostname, users and host keys;
5. offline generalize + audit on the stopped specialized VM;
6. a cloud-init boot check (over ssh) passes on a fresh throwaway VM.

Four boots under TCG (the fourth a boot check's throwaway VM); the VMs are shared across the tests of
this module (they run in order).
Boot-to-SSH seconds are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli import Cli

pytestmark = [pytest.mark.realguest, pytest.mark.integration, pytest.mark.boot]
WAIT = "280"  # below tests.cli's 300 s subprocess limit, so a slow boot fails with our message
ADMIN = "admin"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    private = tmp_path_factory.mktemp("ssh") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "realguest", "-f", str(private)],
                   check=True)
    return private


@pytest.fixture(scope="module")
def cli(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    cli = Cli(tmp_path_factory.mktemp("home") / "home", env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    for name, state in (("deb", "generalized"), ("debspec", "specialized")):
        cli("definition", "create", f"lab/{name}", "--publisher", "debian", "--offer", "debian-12", "--sku", state,
            "--os-type", "linux", "--os-state", state, "--min-memory", "512")
    cli("publish", "lab/deb", "--version", "1.0.0", "--os-disk", str(image))
    yield cli
    for vm in ("first", "second", "special"):
        cli("vm", "delete", vm, ok=False)  # stops QEMU if a test failed half-way


def ssh(cli: Cli, vm: str, command: str, *, key: Path | None = None) -> str:
    """A command in the guest through `imgtool vm ssh` (seeded VMs) or plain ssh with the VM's options."""
    if key is None:
        done = cli("vm", "ssh", vm, "--", command)
        return done.stdout
    port = str(cli.json("vm", "show", vm)["ssh_port"])  # type: ignore[index]
    known = cli.home / "vms" / vm / "known_hosts"
    argv = ["ssh", "-p", port, "-i", str(key), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "-o", f"HostKeyAlias=imgtool-vm-{vm}", f"{ADMIN}@127.0.0.1", command]
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def identity(cli: Cli, vm: str, *, key: Path | None = None) -> dict[str, str]:
    out = ssh(cli, vm, "hostname; cat /etc/machine-id; cat /etc/ssh/ssh_host_ed25519_key.pub; whoami", key=key)
    hostname, machine_id, host_key, user = out.strip().splitlines()
    return {"hostname": hostname, "machine_id": machine_id, "host_key": host_key.split()[1], "user": user}


def boot_seconds(cli: Cli, vm: str, *extra: str) -> dict[str, Any]:
    done = cli.json("vm", "wait", vm, "--timeout", WAIT, *extra)
    assert isinstance(done, dict) and done["ready"]
    print(f"\n{vm}: boot to SSH {done['seconds']} (TCG)")
    return done


@pytest.fixture(scope="module")
def first(cli: Cli, key: Path) -> dict[str, str]:
    started = time.monotonic()
    cli("vm", "new", "first", "--image", "lab/deb@1.0.0", "--admin-user", ADMIN, "--ssh-key", f"{key}.pub",
        "--memory", "1024", "--disk-size", "3G", "--start", "--wait", "--wait-timeout", WAIT)
    print(f"\nfirst: vm new --start --wait took {time.monotonic() - started:.0f}s (TCG, base included)")
    boot_seconds(cli, "first", "--cloud-init")
    return identity(cli, "first")


def test_generalized_image_boots_and_accepts_the_seeded_key(first: dict[str, str]) -> None:
    assert first["hostname"] == "first"
    assert first["user"] == ADMIN
    assert len(first["machine_id"]) == 32


@pytest.fixture(scope="module")
def second(cli: Cli, key: Path, first: dict[str, str]) -> dict[str, str]:
    done = cli.json("vm", "generalize", "first")
    assert isinstance(done, dict) and done["mode"] == "online"
    assert {"/etc/machine-id (emptied)", "/etc/ssh/ssh_host_ed25519_key"} <= set(done["removed"])
    assert cli.json("vm", "show", "first")["state"] == "stopped"  # type: ignore[index]
    assert cli("vm", "start", "first", ok=False).returncode == 5  # generalized: refused without --force

    cli("publish", "lab/deb", "--version", "1.1.0", "--os-disk", "vm:first", "--os-state", "generalized")
    cli("vm", "new", "second", "--image", "lab/deb@1.1.0", "--admin-user", ADMIN, "--ssh-key", f"{key}.pub",
        "--memory", "1024", "--start")
    boot_seconds(cli, "second", "--cloud-init")
    return identity(cli, "second")


def test_disk_size_grows_the_root_file_system(cli: Cli, first: dict[str, str]) -> None:
    """The image is 2 GiB; `--disk-size 3G` grows the partition and ext4 on first boot (growpart, resizefs)."""
    size = int(ssh(cli, "first", "df --output=size -B1M / | tail -1").strip())
    assert size > 2560, f"the root file system has {size} MiB after --disk-size 3G"


def test_generalized_then_published_gives_a_new_identity(cli: Cli, first: dict[str, str],
                                                         second: dict[str, str]) -> None:
    shown = cli.json("version", "show", "lab/deb@1.1.0")
    assert isinstance(shown, dict)
    assert shown["audit"]["clean"] and shown["audit"]["facts"]["os"] == "Debian GNU/Linux 12 (bookworm)"
    assert shown["audit"]["facts"]["boot_mode_ok"] is True
    assert second["hostname"] == "second" and second["user"] == ADMIN
    assert len(second["machine_id"]) == 32
    assert second["machine_id"] != first["machine_id"]
    assert second["host_key"] != first["host_key"]


def test_publishing_a_booted_vm_as_generalized_is_refused(cli: Cli, second: dict[str, str]) -> None:
    cli("vm", "stop", "second", "--timeout", "120")
    refused = cli("publish", "lab/deb", "--version", "1.2.0", "--os-disk", "vm:second", "--os-state",
                  "generalized", ok=False)
    assert refused.returncode == 5, refused.stderr
    assert "not generalized" in refused.stderr and "imgtool vm generalize second" in refused.stderr
    audit = json.loads(cli("--json", "audit", "vm:second", ok=False).stdout)
    assert {"machine_id", "ssh_host_keys", "cloud_init_state"} <= {f["check"] for f in audit["findings"]}


@pytest.fixture(scope="module")
def special(cli: Cli, key: Path, second: dict[str, str]) -> dict[str, str]:
    cli("vm", "stop", "second", "--timeout", "120")
    cli("publish", "lab/debspec", "--version", "1.0.0", "--os-disk", "vm:second", "--os-state", "specialized")
    cli("vm", "new", "special", "--image", "lab/debspec@1.0.0", "--memory", "1024", "--start")
    boot_seconds(cli, "special", "--user", ADMIN, "--identity", str(key))
    return identity(cli, "special", key=key)


def test_specialized_image_keeps_identity(cli: Cli, second: dict[str, str], special: dict[str, str]) -> None:
    assert cli.json("vm", "show", "special")["seed"] is None  # type: ignore[index]
    assert special == second  # hostname, machine-id, host key and the admin user all kept


def test_offline_generalize_and_audit_of_a_stopped_vm(cli: Cli, special: dict[str, str]) -> None:
    cli("vm", "stop", "special", "--timeout", "120")
    before = json.loads(cli("--json", "audit", "vm:special", ok=False).stdout)
    assert not before["clean"]
    done = cli.json("vm", "generalize", "special")
    assert isinstance(done, dict) and done["mode"] == "offline"
    assert "/etc/machine-id (emptied)" in done["removed"]
    after = cli.json("audit", "vm:special")
    assert isinstance(after, dict) and after["clean"]
    assert {"machine_id", "ssh_host_keys", "cloud_init_state"}.isdisjoint({f["check"] for f in after["findings"]})


def test_cloud_init_boot_check_passes_over_ssh_on_the_real_guest(cli: Cli) -> None:
    """The ssh-based check kinds against a real guest (the tiny test image has no sshd): the throwaway
    VM gets a fresh key and user from its seed, ssh must answer, and `cloud-init status --wait` must exit
    0, all within the check's timeout. A fourth boot."""
    cli("definition", "create", "lab/debcheck", "--publisher", "debian", "--offer", "debian-12", "--sku", "checked",
        "--os-type", "linux", "--os-state", "generalized", "--min-memory", "1024",
        "--require-boot-check", "--boot-check", "cloud-init", "--boot-timeout", WAIT)
    cli("publish", "lab/debcheck", "--version", "1.0.0", "--os-disk", "lab/deb@1.0.0")
    assert cli.json("version", "resolve", "lab/debcheck")["latest"] is None  # type: ignore[index]  # pending
    started = time.monotonic()
    done = cli("version", "check", "lab/debcheck@1.0.0")
    print(f"\ncloud-init boot check took {time.monotonic() - started:.0f}s (TCG)")
    assert "passed" in done.stdout
    shown = cli.json("version", "show", "lab/debcheck@1.0.0")
    assert isinstance(shown, dict)
    assert shown["check"]["state"] == "passed" and shown["check"]["kind"] == "cloud-init"
    assert cli.json("version", "resolve", "lab/debcheck")["latest"] == "1.0.0"  # type: ignore[index]
    listed = cli.json("vm", "list")
    assert isinstance(listed, list)
    assert [vm["name"] for vm in listed if vm["name"].startswith("boot-check-")] == []  # deleted after the check
