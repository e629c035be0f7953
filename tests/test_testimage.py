"""The tiny test image from scripts/build-test-image boots under QEMU (TCG) and keeps its contract.

The contract lives in scripts/testimage/init: one line on the serial console,
`READY hostname=<h> instance=<id> first_boot=<yes|no> user=<u> marker=<m>`, identity
taken from a NoCloud seed (ISO labelled cidata) on the first boot of an instance only,
`#tiny:` user-data hooks run then, state kept on the ext4 partition, and an ACPI
power button press (QMP system_powerdown) ending in a clean power-off.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pycdlib
import pytest

from imgtool.tools import qmp
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build-test-image"
READY = re.compile(r"^READY hostname=(\S+) instance=(\S+) first_boot=(yes|no) user=(\S+) marker=(\S+)\r?$", re.M)
# Bounds on waiting, not expectations: a boot takes ~6 s (BIOS) or ~15 s (UEFI) under TCG.
BOOT_TIMEOUT = 120.0
POWEROFF_TIMEOUT = 30.0
# Tools in /usr/bin; the script checks the sbin ones (sfdisk, mkfs.*) itself.
BUILD_TOOLS = ("apt-get", "dpkg-deb", "mcopy", "cpio", "zstd", "qemu-system-x86_64")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@test"


def build(out: Path, *extra: str) -> Path:
    done = subprocess.run([str(SCRIPT), str(out), *extra], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"build-test-image failed:\n{done.stderr}"
    return out


@pytest.fixture(scope="module")
def bios_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools(*BUILD_TOOLS, "syslinux")
    return build(tmp_path_factory.mktemp("testimage") / "bios.raw")


def user_data() -> str:
    """Two cloud-config parts in one MIME multipart document, the way cloud-init combines them."""
    ours = "\n".join([
        "#cloud-config",
        'hostname: "vm-one"',
        "users:",
        '  - name: "alice"',
        '    shell: "/bin/sh"',
        "    ssh_authorized_keys:",
        f'      - "{KEY}"',
        "",
    ])  # fmt: skip
    theirs = "#cloud-config\n#tiny: echo hello > var/lib/tiny/marker\n"
    document = MIMEMultipart()
    document.attach(MIMEText(ours, "cloud-config"))
    document.attach(MIMEText(theirs, "cloud-config"))
    return document.as_string()


def make_seed(path: Path, instance_id: str, hostname: str) -> Path:
    files = {
        "meta-data": f'instance-id: "{instance_id}"\nlocal-hostname: "{hostname}"\n'.encode(),
        "user-data": user_data().encode(),
    }
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=1, vol_ident="cidata", joliet=3, rock_ridge="1.09")
    for (name, data), short in zip(files.items(), ("/METADATA.;1", "/USERDATA.;1"), strict=True):
        iso.add_fp(io.BytesIO(data), len(data), iso_path=short, rr_name=name, joliet_path=f"/{name}")
    iso.write(str(path))
    iso.close()
    return path


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    log: Path
    qmp_socket: Path

    def serial(self) -> str:
        return self.log.read_bytes().decode("utf-8", "replace") if self.log.exists() else ""

    def ready(self) -> dict[str, str]:
        """The fields of the READY line, waiting for it (bounded); fails with the serial log."""
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            match = READY.search(self.serial())
            if match:
                return dict(zip(("hostname", "instance", "first_boot", "user", "marker"), match.groups(), strict=True))
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        pytest.fail(f"no READY line (qemu exit {self.process.poll()}); serial log:\n{self.serial()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


Boot = Callable[[Path, Path | None, bool], Guest]


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Boot]:
    """boot(disk, seed, uefi) -> a started Guest; every guest is killed at teardown."""
    guests: list[Guest] = []

    def start(disk: Path, seed: Path | None, uefi: bool) -> Guest:
        n = len(guests)
        log, sock = tmp_path / f"serial{n}.log", tmp_path / f"qmp{n}.sock"
        argv = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "256", "-nodefaults",
            "-display", "none", "-serial", f"file:{log}", "-qmp", f"unix:{sock},server=on,wait=off",
        ]  # fmt: skip
        if uefi:
            vars_copy = tmp_path / f"vars{n}.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            argv += [
                "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}",
                "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
            ]  # fmt: skip
        argv += ["-drive", f"file={disk},if=virtio,format=raw"]
        if seed is not None:
            argv += ["-drive", f"file={seed},if=virtio,format=raw,readonly=on"]
        guest = Guest(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL), log, sock)
        guests.append(guest)
        return guest

    yield start
    for guest in guests:
        guest.stop()


def ext4_partition(disk: Path, out: Path) -> Path:
    """Copy MBR partition 2 (the ext4 root) out of the raw disk for e2fsprogs."""
    with disk.open("rb") as f:
        mbr = f.read(512)
        entry = mbr[446 + 16 : 446 + 32]
        start, sectors = int.from_bytes(entry[8:12], "little"), int.from_bytes(entry[12:16], "little")
        f.seek(start * 512)
        out.write_bytes(f.read(sectors * 512))
    return out


def test_bios_image_first_boot_then_same_instance_then_clean_poweroff(
    bios_image: Path, boot: Boot, tmp_path: Path
) -> None:
    require_tools("qemu-system-x86_64", "debugfs", "e2fsck")
    disk = tmp_path / "disk.raw"
    shutil.copyfile(bios_image, disk)
    seed = make_seed(tmp_path / "seed.iso", "iid-one", "vm-one")

    first = boot(disk, seed, False)
    assert first.ready() == {"hostname": "vm-one", "instance": "iid-one", "first_boot": "yes",
                             "user": "alice", "marker": "hello"}  # fmt: skip
    assert first.serial().count("READY ") == 1
    first.stop()  # a hard stop: the init synced before READY

    second = boot(disk, seed, False)
    assert second.ready() == {"hostname": "vm-one", "instance": "iid-one", "first_boot": "no",
                              "user": "alice", "marker": "hello"}  # fmt: skip
    qmp.powerdown(second.qmp_socket)
    try:
        second.process.wait(timeout=POWEROFF_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the guest ignored the ACPI power button; serial log:\n{second.serial()[-2000:]}")

    root = ext4_partition(disk, tmp_path / "root.ext4")
    fsck = subprocess.run(["e2fsck", "-fn", str(root)], check=False, capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # unmounted cleanly, nothing to replay
    keys = subprocess.run(["debugfs", "-R", "cat /home/alice/.ssh/authorized_keys", str(root)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert keys.strip() == KEY
    hostname = subprocess.run(["debugfs", "-R", "cat /etc/hostname", str(root)],
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert hostname.strip() == "vm-one"


def require_files(*paths: Path) -> None:
    """Like require_tools, for files: skip locally, fail in CI."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing and os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
        pytest.fail(f"missing files: {', '.join(missing)} (run ./scripts/setup)")
    if missing:
        pytest.skip(f"missing files: {', '.join(missing)} (run ./scripts/setup)")


def test_uefi_image_without_seed_boots_with_its_golden_identity(boot: Boot, tmp_path: Path) -> None:
    require_tools(*BUILD_TOOLS, "sfdisk")
    require_files(OVMF_CODE, OVMF_VARS)
    disk = build(tmp_path / "uefi.raw", "--uefi")
    table = subprocess.run(["sfdisk", "--dump", str(disk)], capture_output=True, text=True, check=True).stdout
    assert "label: gpt" in table and "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" in table

    guest = boot(disk, None, True)
    assert guest.ready() == {"hostname": "golden", "instance": "none", "first_boot": "yes",
                             "user": "none", "marker": "none"}  # fmt: skip
