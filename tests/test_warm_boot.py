"""Warm starts under real QEMU (TCG) with the tiny test image and its agent (scripts/testimage/agent).

One warm state is made per module (one template boot); each test restores VMs from it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.test_vm_boot import BOOT_TIMEOUT, build_image, new_cli

pytestmark = [pytest.mark.integration, pytest.mark.boot]
WARM_READY = re.compile(r"READY hostname=(\S+) instance=(\S+) first_boot=(\S+) user=(\S+) marker=(\S+)")
SIZE = ("--cpus", "1", "--memory", "256")
# Run by the agent after it wrote the machine-id and reseeded the RNG: both end up in the READY line.
IDENTITY_HOOK = ('#cloud-config\n#tiny: echo "$(cat etc/machine-id)-$(head -c 32 /dev/urandom | od -An -tx1 '
                 '| tr -d \' \\n\')" > var/lib/tiny/marker\n')


@pytest.fixture(scope="module")
def warmed(tmp_path_factory: pytest.TempPathFactory) -> Cli:
    root = tmp_path_factory.mktemp("warm")
    image = build_image(root / "tiny.raw")
    cli = new_cli(root, "generalized")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")
    made = cli.json("version", "warm", "lab/tiny@1.0.0", *SIZE, "--timeout", BOOT_TIMEOUT)
    assert isinstance(made, dict) and made["warm"]["cpus"] == 1 and made["warm"]["bytes"] > 0
    return cli


def ready_line(cli: Cli, vm: str) -> dict[str, str]:
    line = cli("vm", "console", vm, "--until", "READY", "--timeout", "60").stdout
    match = WARM_READY.search(line)
    assert match, line
    return dict(zip(["hostname", "instance", "first_boot", "user", "marker"], match.groups(), strict=True))


def warm_folder(cli: Cli) -> Path:
    (folder,) = [p for p in (cli.home / "warm").glob("*/1c-256m")]
    return folder


def test_warm_state_files_are_private_and_listed(warmed: Cli) -> None:
    folder = warm_folder(warmed)
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
    assert modes == {"warm.json": 0o600, "state.zst": 0o600, "ram": 0o600, "disk-os.qcow2": 0o400}
    assert folder.stat().st_mode & 0o777 == 0o700
    shown = warmed.json("version", "show", "lab/tiny@1.0.0")
    assert isinstance(shown, dict)
    (state,) = shown["warm"]
    assert state["cpus"] == 1 and state["memory_mib"] == 256 and state["machine"].startswith("pc-q35-")
    assert "warm state" in warmed("version", "show", "lab/tiny@1.0.0").stdout
    usage = warmed.json("du")
    assert isinstance(usage, dict) and usage["warm"]["count"] == 1 and usage["warm"]["bytes"] >= state["bytes"]


def test_two_warm_vms_differ_in_identity_and_in_random_bytes(warmed: Cli, tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text(IDENTITY_HOOK)
    lines = {}
    for name in ("wa", "wb"):
        made = warmed.json("vm", "new", name, "--image", "lab/tiny@1.0.0", *SIZE, "--warm", "--user-data",
                           str(user_data), "--admin-user", f"u{name}")
        assert isinstance(made, dict) and made["state"] == "running" and made["warm"]["state"] == "1c-256m"
        lines[name] = ready_line(warmed, name)
    a, b = lines["wa"], lines["wb"]
    assert (a["hostname"], b["hostname"]) == ("wa", "wb") and (a["user"], b["user"]) == ("uwa", "uwb")
    assert a["first_boot"] == b["first_boot"] == "warm" and a["instance"] != b["instance"]
    machine_a, random_a = a["marker"].split("-")
    machine_b, random_b = b["marker"].split("-")
    assert len(machine_a) == 32 and machine_a != machine_b
    assert len(random_a) == 64 and random_a != random_b
    warmed("vm", "delete", "wb")
    # An ordinary VM afterwards: stopped and started, it boots cold with its own seed, keeping the identity
    # the agent gave it (the seed's instance id is the one the agent wrote: not a first boot).
    warmed("vm", "stop", "wa")
    warmed("vm", "start", "wa")
    line = warmed("vm", "console", "wa", "--until", "READY", "--timeout", BOOT_TIMEOUT).stdout
    again = WARM_READY.search(line)
    assert again, line
    assert again.groups()[:4] == ("wa", a["instance"], "no", "uwa")
    warmed("vm", "delete", "wa")


def test_a_plain_start_restores_from_a_fitting_warm_state_and_cold_opts_out(warmed: Cli) -> None:
    made = warmed.json("vm", "new", "auto", "--image", "lab/tiny@1.0.0", *SIZE, "--start")
    assert isinstance(made, dict) and made["warm"]["state"] == "1c-256m"
    assert ready_line(warmed, "auto")["first_boot"] == "warm"
    warmed("vm", "delete", "auto")
    booted = warmed.json("vm", "new", "booted", "--image", "lab/tiny@1.0.0", *SIZE, "--start", "--cold")
    assert isinstance(booted, dict) and "warm" not in booted and booted["state"] == "running"
    line = warmed("vm", "console", "booted", "--until", "READY", "--timeout", BOOT_TIMEOUT).stdout
    assert "first_boot=warm" not in line and "hostname=booted" in line
    warmed("vm", "delete", "booted")
    refused = warmed("vm", "new", "both", "--image", "lab/tiny@1.0.0", "--warm", "--cold", ok=False)
    assert refused.returncode == 2 and "--cold" in refused.stderr


def test_a_state_that_does_not_fit_this_qemu_is_refused(warmed: Cli) -> None:
    record = warm_folder(warmed) / "warm.json"
    original = record.read_text()
    changed = json.loads(original)
    changed["qemu_version"] = "QEMU emulator version 6.0.0"
    record.write_text(json.dumps(changed))
    try:
        done = warmed("vm", "new", "old", "--image", "lab/tiny@1.0.0", *SIZE, "--warm", ok=False)
    finally:
        record.write_text(original)
    assert done.returncode == 5, done.stderr
    assert "QEMU version" in done.stderr and "imgtool version warm lab/tiny@1.0.0" in done.stderr
    assert not (warmed.home / "vms" / "old").exists()
    missing = warmed("vm", "new", "other", "--image", "lab/tiny@1.0.0", "--cpus", "2", "--memory", "256", "--warm",
                     ok=False)
    assert missing.returncode == 3 and "--cpus 2 --memory 256" in missing.stderr


def qemu_pids(marker: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline and b"qemu-system" in cmdline:
                found.append(int(proc.name))
    return found


def test_failed_personalization_deletes_the_vm(warmed: Cli, tmp_path: Path) -> None:
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\n#tiny: false\n")
    done = warmed("vm", "new", "bad", "--image", "lab/tiny@1.0.0", *SIZE, "--warm", "--user-data", str(user_data),
                  ok=False)
    assert done.returncode == 9, done.stderr
    assert "personalizing VM 'bad' failed, so it was deleted" in done.stderr
    assert "user-data command failed: false" in done.stderr
    assert not (warmed.home / "vms" / "bad").exists()
    assert qemu_pids(str(warmed.home / "vms" / "bad")) == []


def wait_until(condition: object, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.2)
    return False


def test_kill_9_during_version_warm_leaves_nothing_usable_and_gc_cleans_it(warmed: Cli) -> None:
    env = {**os.environ, "IMGTOOL_HOME": str(warmed.home), **warmed.env}
    proc = subprocess.Popen([sys.executable, "-m", "imgtool", "version", "warm", "lab/tiny@1.0.0", "--cpus", "2",
                             "--memory", "256"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    version_dir = warm_folder(warmed).parent
    assert wait_until(lambda: any((p / "qemu.pid").exists() for p in version_dir.glob(".tmp-*")), 120)
    (tmp,) = version_dir.glob(".tmp-*")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert wait_until(lambda: qemu_pids(str(tmp)) == [], 30), "the template QEMU outlived version warm"
    assert not (version_dir / "2c-256m").exists()
    refused = warmed("vm", "new", "half", "--image", "lab/tiny@1.0.0", "--cpus", "2", "--memory", "256", "--warm",
                     ok=False)
    assert refused.returncode == 3
    plan = warmed.json("gc", "--dry-run")
    assert isinstance(plan, dict)
    assert any(i["kind"] == "warm-state" and i["name"].endswith(tmp.name) for i in plan["items"]), plan["items"]
    warmed("gc")
    assert not tmp.exists() and warm_folder(warmed).is_dir()


def test_kill_9_during_a_warm_vm_new_leaves_no_running_vm_and_gc_cleans_it(warmed: Cli) -> None:
    env = {**os.environ, "IMGTOOL_HOME": str(warmed.home), **warmed.env}
    folder = warmed.home / "vms" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "imgtool", "vm", "new", "killed", "--image", "lab/tiny@1.0.0",
                             *SIZE, "--warm"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: _pid(folder) > 0, 60)
    pid = _pid(folder)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # The guard SIGKILLs the restored QEMU: nothing runs with the template's identity.
    assert pid and wait_until(lambda: not Path(f"/proc/{pid}").exists() or b"zombie" in _status(pid), 30)
    assert not (folder / "vm.json").exists()
    listed = warmed.json("vm", "list")
    assert isinstance(listed, list) and all(v["state"] != "running" for v in listed if v["name"] == "killed")
    warmed("gc")
    assert not folder.exists()


def _pid(folder: Path) -> int:
    try:
        return int((folder / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def _status(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"


def test_version_warm_delete_and_gc_after_the_version_goes(warmed: Cli) -> None:
    folder = warm_folder(warmed)
    warmed("version", "warm", "lab/tiny@1.0.0", "--delete")
    assert not folder.exists()
    assert warmed.json("version", "show", "lab/tiny@1.0.0")["warm"] == []  # type: ignore[index]
    # A state whose version is deleted goes at the next gc.
    folder.mkdir(parents=True)
    (folder / "warm.json").write_text("{}")
    warmed("version", "delete", "lab/tiny@1.0.0", "--purge")
    warmed("gc")
    assert not folder.parent.exists()
