"""VMs that really boot under QEMU (TCG): seed, first boot, capture back, incremental publish.

The test image comes from scripts/build-test-image: its init prints
`READY hostname=<h> instance=<id> first_boot=<yes|no> user=<u> marker=<m>` on the serial console.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"READY hostname=(\S+) instance=(\S+) first_boot=(yes|no) user=(\S+) marker=(\S+)")
BOOT_TIMEOUT = "240"


def build_image(out: Path, *extra: str) -> Path:
    require_tools("qemu-img", "qemu-nbd", "qemu-system-x86_64", "mkfs.fat", "mkfs.ext4", "syslinux", "mcopy")
    subprocess.run([str(ROOT / "scripts" / "build-test-image"), str(out), *extra], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="module")
def bios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("image") / "tiny.raw")


def ready(cli: Cli, vm: str) -> dict[str, str]:
    line = cli("vm", "console", vm, "--until", "READY", "--timeout", BOOT_TIMEOUT).stdout
    match = READY.search(line)
    assert match, line
    return dict(zip(["hostname", "instance", "first_boot", "user", "marker"], match.groups(), strict=True))


def new_cli(tmp_path: Path, state: str, *extra: str) -> Cli:
    cli = Cli(tmp_path / "home", env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/tiny", "--publisher", "imgtool", "--offer", "tiny", "--sku", state,
        "--os-type", "linux", "--os-state", state, "--min-vcpus", "1", "--max-vcpus", "4",
        "--min-memory", "128", "--max-memory", "2048", *extra)
    return cli


def stored_bytes(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "store").rglob("*") if p.is_file())


def test_generalized_vm_boots_is_captured_and_republished(bios_image: Path, tmp_path: Path) -> None:
    cli = new_cli(tmp_path, "generalized")
    # The tiny image carries a "golden" identity on purpose (machine-id, host keys): the publish audit
    # would refuse it, so these tests allow it (tests/realguest generalizes a real guest instead).
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image), "--allow-identity")

    too_big = cli("vm", "new", "big", "--image", "lab/tiny", "--cpus", "8", ok=False)
    assert too_big.returncode == 5 and "1..4" in too_big.stderr
    assert not (cli.home / "vms" / "big").exists()

    key = tmp_path / "key.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test@host\n")
    user_data = tmp_path / "user-data"
    user_data.write_text("#cloud-config\n#tiny: echo hello-from-v1 > var/lib/tiny/marker\n")
    cli("vm", "new", "v1", "--image", "lab/tiny@latest", "--hostname", "web-1", "--admin-user", "alice",
        "--ssh-key", str(key), "--user-data", str(user_data), "--memory", "256", "--start")
    assert (cli.home / "vms" / "v1" / "seed.iso").stat().st_mode & 0o777 == 0o600
    first = ready(cli, "v1")
    assert first["hostname"] == "web-1" and first["first_boot"] == "yes" and first["user"] == "alice"
    assert first["instance"].startswith("iid-") and first["marker"] == "hello-from-v1"
    listed = cli.json("vm", "list")
    assert isinstance(listed, list) and listed[0]["state"] == "running"
    twin = cli("vm", "new", "v1", "--image", "lab/tiny", ok=False)
    assert twin.returncode == 4

    cli("vm", "stop", "v1", "--timeout", "20")
    cli("vm", "start", "v1")
    second = ready(cli, "v1")
    assert second["first_boot"] == "no" and second["instance"] == first["instance"]
    cli("vm", "stop", "v1", "--timeout", "20")

    before = stored_bytes(cli.home)
    cli("publish", "lab/tiny", "--version", "1.0.1", "--os-disk", "vm:v1", "--os-state", "generalized",
        "--allow-identity")
    added = stored_bytes(cli.home) - before
    assert added < 2 << 20, f"publishing the VM's change added {added} bytes"
    shown = cli.json("version", "show", "lab/tiny@1.0.1")
    assert isinstance(shown, dict) and shown["disks"][0]["source"]["parent_version"] == "lab/tiny@1.0.0"

    cli("vm", "new", "v2", "--image", "lab/tiny@latest", "--memory", "256", "--start")
    child = ready(cli, "v2")
    assert child["marker"] == "hello-from-v1"  # the change made inside v1 travelled through 1.0.1
    assert child["first_boot"] == "yes" and child["instance"] != first["instance"] and child["hostname"] == "v2"
    cli("vm", "stop", "v2", "--timeout", "20")

    refused = cli("version", "delete", "lab/tiny@1.0.0", ok=False)
    assert refused.returncode == 5 and "v1" in refused.stderr
    overlay = cli.home / "vms" / "v2" / "disk-os.qcow2"
    assert overlay.stat().st_blocks * 512 < 16 << 20  # an overlay, not a copy
    cli("vm", "delete", "v1")
    cli("version", "delete", "lab/tiny@1.0.0")
    cli("gc")
    assert "ok:" in cli("verify", "--deep").stdout
    cli("vm", "start", "v2")  # gc kept everything v2 stands on
    assert ready(cli, "v2")["first_boot"] == "no"
    cli("vm", "delete", "v2")
    assert cli.json("vm", "list") == []


def test_specialized_vm_keeps_identity_and_gets_no_seed(bios_image: Path, tmp_path: Path) -> None:
    cli = new_cli(tmp_path, "specialized")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image))
    refused = cli("vm", "new", "s1", "--image", "lab/tiny", "--hostname", "other", ok=False)
    assert refused.returncode == 2 and "specialized" in refused.stderr
    cli("vm", "new", "s1", "--image", "lab/tiny", "--memory", "256", "--start")
    assert not (cli.home / "vms" / "s1" / "seed.iso").exists()
    booted = ready(cli, "s1")
    assert booted["hostname"] == "golden" and booted["user"] == "none"
    cli("vm", "stop", "s1", "--timeout", "20")
    cli("vm", "snapshot", "s1", "before")
    captured = cli.json("capture", "snapshot:s1/before")
    assert isinstance(captured, dict) and captured["source"]["kind"] == "snapshot"
    cli("vm", "delete", "s1")


def test_uefi_vm_boots_under_ovmf(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.fail("OVMF is missing (apt-get install ovmf; ./scripts/setup does it)")
    image = build_image(tmp_path / "uefi.raw", "--uefi")
    cli = new_cli(tmp_path, "generalized", "--firmware", "uefi")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")
    cli("vm", "new", "u1", "--image", "lab/tiny", "--hostname", "efi-1", "--memory", "256", "--start")
    assert (cli.home / "vms" / "u1" / "ovmf-vars.fd").exists()
    assert ready(cli, "u1")["hostname"] == "efi-1"
    cli("vm", "delete", "u1")
