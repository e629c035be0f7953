"""The UEFI variant of the real Debian guest: GPT + ESP with a grub-mkimage'd BOOTX64.EFI, booted under
OVMF, provisioned from its seed, audited as a UEFI layout that matches its definition. One boot."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools
from tests.realguest.conftest import ROOT, require_root_or_cache
from tests.realguest.test_debian import ADMIN, WAIT

pytestmark = [pytest.mark.realguest, pytest.mark.integration, pytest.mark.boot]


def test_uefi_image_boots_under_ovmf_and_accepts_the_seeded_key(tmp_path: Path) -> None:
    require_tools("mmdebstrap", "grub-mkimage", "mkfs.fat", "mcopy", "qemu-system-x86_64", "qemu-storage-daemon",
                  "debugfs", "ssh", "ssh-keygen")
    if not Path("/usr/share/OVMF/OVMF_CODE_4M.fd").exists():
        pytest.fail("OVMF is missing (apt-get install ovmf; ./scripts/setup does it)")
    require_root_or_cache()
    image = tmp_path / "debian12-uefi.raw"
    subprocess.run([str(ROOT / "scripts" / "build-debian-image"), str(image), "--uefi"], check=True, timeout=900)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    cli = Cli(tmp_path / "home", env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/deb", "--publisher", "debian", "--offer", "debian-12", "--sku", "uefi",
        "--os-type", "linux", "--os-state", "generalized", "--firmware", "uefi")
    cli("publish", "lab/deb", "--version", "1.0.0", "--os-disk", str(image))
    facts = cli.json("version", "show", "lab/deb@1.0.0")["audit"]["facts"]  # type: ignore[index]
    assert facts["partition_table"] == "gpt" and facts["boot_modes"] == ["uefi"] and facts["boot_mode_ok"]
    try:
        cli("vm", "new", "efi", "--image", "lab/deb", "--admin-user", ADMIN, "--ssh-key", f"{key}.pub",
            "--memory", "1024", "--start", "--wait", "--wait-timeout", WAIT)
        out = cli("vm", "ssh", "efi", "--", "hostname; whoami; test -d /sys/firmware/efi && echo efi").stdout
        assert out.split() == ["efi", ADMIN, "efi"]
    finally:
        cli("vm", "delete", "efi", ok=False)
