"""Version lifecycle with real boots under QEMU (TCG): boot checks decide `latest`; revocation reaches VMs.

Boots: one good check (the test image prints READY), one failing check (a disk of zeros: nothing to
boot, so no READY before the short timeout), and one VM start that must warn about its revoked version.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.test_vm_boot import BOOT_TIMEOUT, build_image, new_cli

pytestmark = [pytest.mark.integration, pytest.mark.boot]


@pytest.fixture(scope="module")
def bios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("image") / "tiny.raw")


def resolved(cli: Cli) -> object:
    found = cli.json("version", "resolve", "lab/tiny")
    assert isinstance(found, dict)
    return found["latest"]


def test_boot_checks_decide_latest_and_revocation_reaches_vms(bios_image: Path, tmp_path: Path) -> None:
    cli = new_cli(tmp_path, "specialized", "--require-boot-check", "--boot-check", "console:READY",
                  "--boot-timeout", BOOT_TIMEOUT)
    zeros = tmp_path / "zeros.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(zeros), "64M"], check=True, capture_output=True)
    cli("publish", "lab/tiny", "--version", "1.1.0", "--os-disk", str(zeros))
    assert resolved(cli) is None  # pending

    # The console says the disk cannot boot: the check fails on that line, not at the end of its timeout.
    failed = cli("version", "check", "lab/tiny@1.1.0", "--timeout", BOOT_TIMEOUT, ok=False)
    assert failed.returncode == 1, failed.stderr
    assert "boot check: VM boot-check-" in failed.stderr and "imgtool vm console boot-check-" in failed.stderr
    shown = cli.json("version", "show", "lab/tiny@1.1.0")
    assert isinstance(shown, dict) and shown["check"]["state"] == "failed"
    assert shown["check"]["kind"] == "console:READY"
    assert "its console says the disk cannot boot: 'Boot failed: not a bootable disk'" in shown["check"]["detail"]
    assert "Booting from Hard Disk" in shown["check"]["console_tail"]  # the firmware's own words, kept
    assert resolved(cli) is None

    passed = cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image), "--check")
    assert "boot check of lab/tiny@1.0.0: passed" in passed.stdout
    good = cli.json("version", "show", "lab/tiny@1.0.0")
    assert isinstance(good, dict) and good["check"]["state"] == "passed" and good["check"]["console_tail"] is None
    assert resolved(cli) == "1.0.0"
    explain = cli("version", "resolve", "lab/tiny", "--explain").stdout
    assert "boot check failed" in explain
    assert cli.json("vm", "list") == []  # the throwaway VMs are gone
    assert [p.name for p in (cli.home / "vms").iterdir() if p.is_dir()] == []  # (name locks stay, as for vm new)

    cli("vm", "new", "web", "--image", "lab/tiny@1.0.0", "--memory", "256")
    revoked = cli.json("version", "revoke", "lab/tiny@1.0.0", "--reason", "CVE-2026-1234 in the kernel")
    assert isinstance(revoked, dict) and revoked["vms"] == ["web"]
    assert resolved(cli) is None
    refused = cli("vm", "new", "web2", "--image", "lab/tiny@1.0.0", ok=False)
    assert refused.returncode == 5 and "revoked" in refused.stderr
    assert "web: revoked since " in cli("vm", "list").stdout
    assert ": CVE-2026-1234 in the kernel" in cli("vm", "list").stdout
    assert "CVE-2026-1234 in the kernel (since " in cli("vm", "show", "web").stdout
    started = cli("vm", "start", "web")
    assert "warning" in started.stderr and "revoked: CVE-2026-1234" in started.stderr
    cli("vm", "delete", "web")

    cli("vm", "new", "lab-copy", "--image", "lab/tiny@1.0.0", "--memory", "256", "--allow-revoked")
    copy = cli.json("vm", "show", "lab-copy")
    assert isinstance(copy, dict) and copy["allowed_revoked"] == "CVE-2026-1234 in the kernel"
    cli("vm", "delete", "lab-copy")

    promoting = cli("version", "update", "lab/tiny@1.1.0", "--promote")
    assert "warning: lab/tiny@1.1.0 failed its boot check" in promoting.stderr
    assert resolved(cli) == "1.1.0"
    promoted = cli.json("version", "show", "lab/tiny@1.1.0")
    assert isinstance(promoted, dict) and promoted["check"]["state"] == "promoted"
    assert "was: failed" in promoted["check"]["detail"]
