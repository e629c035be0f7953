"""Shared folders in a real QEMU guest (TCG): the tiny image mounts three virtio-fs shares served by QEMU 7.2's
virtiofsd, reads what the host wrote, writes where it may, and is refused by the host where it may not.

share0: read-write, virtiofsd started by imgtool.vm.virtiofs.start (as this user).
share1: read-only, the same way: the guest mounts it read-write, so only the host can refuse the writes.
share2: read-only, served as the unprivileged user `nobody` (the user-namespace form of the argv), for
        the path every non-root user of imgtool takes; skipped when the test does not run as root.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.tools import ports, qemu
from imgtool.vm import seed, share_check, shares, virtiofs
from imgtool.vm.shares import Share
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ROOT = Path(__file__).resolve().parent.parent
WAIT = 240.0
NOBODY = 65534
GUEST = "; ".join([
    "mkdir -p /mnt/rw /mnt/ro /mnt/user",
    "mount -t virtiofs imgtool:share0 /mnt/rw && mount -t virtiofs imgtool:share1 /mnt/ro && echo MOUNTED",
    "mount -t virtiofs imgtool:share2 /mnt/user 2>/dev/null && { echo USER-MOUNTED;"
    " echo \"READ-USER $(cat /mnt/user/keep.txt)\"; echo x > /mnt/user/new.txt || echo USER-RO-WRITE-REFUSED; }",
    'echo "READ-RW $(cat /mnt/rw/from-host.txt)"',
    'echo "READ-RO $(cat /mnt/ro/keep.txt)"',
    "echo from-guest > /mnt/rw/from-guest.txt && echo RW-WRITE-OK",
    "echo x > /mnt/ro/new.txt || echo RO-WRITE-REFUSED",
    "rm /mnt/ro/keep.txt || echo RO-REMOVE-REFUSED",
    "sync; echo GUEST-DONE",
])  # fmt: skip


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "syslinux", "mcopy", "unshare")
    if not Path(shares.VIRTIOFSD).is_file():
        require_tools("virtiofsd")  # skips locally, fails in CI, with the install hint
    out = tmp_path_factory.mktemp("image") / "tiny.raw"
    subprocess.run([str(ROOT / "scripts" / "build-test-image"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A scratch folder another user can reach (pytest's tmp folders are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="imgtool-shares-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def serve_as_nobody(share: Share, socket: Path, log: Path) -> subprocess.Popen[bytes]:
    """share's virtiofsd with the unprivileged argv, run as `nobody` (what a non-root imgtool user gets)."""
    listener = virtiofs._listen(socket)
    os.chown(socket, NOBODY, NOBODY)
    try:
        argv = shares.virtiofsd_argv(share, fd=listener.fileno(), unprivileged=True)
        with log.open("ab") as out:
            return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                                     *argv], pass_fds=(listener.fileno(),), stdout=out, stderr=out)
    finally:
        listener.close()


def test_a_guest_reads_and_writes_shares_and_the_host_refuses_writes_to_read_only_ones(
        image: Path, tmp_path: Path, world_dir: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (rw / "from-host.txt").write_text("hello-from-host\n")
    (ro / "keep.txt").write_text("keep-me\n")
    as_user = os.geteuid() == 0
    user_dir = world_dir / "user"
    user_dir.mkdir()
    (user_dir / "keep.txt").write_text("user-keep\n")
    if as_user:
        os.chown(user_dir, NOBODY, NOBODY)
        os.chown(user_dir / "keep.txt", NOBODY, NOBODY)

    home = tmp_path / "home"
    home.mkdir()
    vm = tmp_path / "vm"
    vm.mkdir()
    checked = [share_check.check_host(Share(rw, "/mnt/rw"), home=home),
               share_check.check_host(Share(ro, "/mnt/ro", readonly=True), home=home)]
    servers = [virtiofs.start(share, socket=virtiofs.socket_path(vm, i), log=vm / "virtiofsd.log")
               for i, share in enumerate(checked)]
    nobody = serve_as_nobody(Share(user_dir, "/mnt/user", True), virtiofs.socket_path(world_dir, 2),
                             vm / "virtiofsd-user.log") if as_user else None
    devices = [*shares.device_argv(0, virtiofs.socket_path(vm, 0)), *shares.device_argv(1, virtiofs.socket_path(vm, 1))]
    if nobody is not None:
        devices += shares.device_argv(2, virtiofs.socket_path(world_dir, 2))

    seed.write_seed(vm / "seed.iso", seed.Provisioning("iid-shares", "vmfs", "tester",
                                                       user_data=f"#cloud-config\n#tiny-after: {GUEST}\n"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(image), str(vm / "disk.qcow2")],
                   check=True)
    spec = qemu.VmSpec(name="vmfs", arch="x86_64", cpus=1, memory_mib=128, disks=(qemu.Drive(vm / "disk.qcow2"),),
                       seed=vm / "seed.iso", firmware="bios", ovmf_code=None, ovmf_vars=None, accel="tcg",
                       ssh_port=ports.free_port(), qmp_socket=vm / "qmp.sock", serial_log=vm / "serial.log",
                       pid_file=vm / "qemu.pid")
    argv = qemu.build_argv(spec) + shares.memory_argv(128) + devices
    qemu_pid = None
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        qemu_pid = int((vm / "qemu.pid").read_text())
        console = wait_for(vm / "serial.log", "GUEST-DONE")
        assert "MOUNTED" in console and "READ-RW hello-from-host" in console and "READ-RO keep-me" in console
        assert "RW-WRITE-OK" in console and (rw / "from-guest.txt").read_text() == "from-guest\n"
        assert "RO-WRITE-REFUSED" in console and "RO-REMOVE-REFUSED" in console
        assert re.search(r"new\.txt: Read-only file system", console), console[-2000:]
        assert sorted(p.name for p in ro.iterdir()) == ["keep.txt"]
        if nobody is not None:
            assert "USER-MOUNTED" in console and "READ-USER user-keep" in console
            assert "USER-RO-WRITE-REFUSED" in console and sorted(p.name for p in user_dir.iterdir()) == ["keep.txt"]
            owner = Path(f"/proc/{nobody.pid}/status").read_text()
            assert re.search(rf"^Uid:\s+{NOBODY}\s", owner, re.M)  # virtiofsd itself runs as nobody
    finally:
        if qemu_pid is not None:
            os.kill(qemu_pid, 9)
        # Each virtiofsd ends with its QEMU: a VM stop needs no step of its own for them.
        deadline = time.monotonic() + 30
        while any(s.alive() for s in servers) or (nobody is not None and nobody.poll() is None):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        outlived = [s.pid for s in servers if s.alive()] + ([nobody.pid] if nobody and nobody.poll() is None else [])
        for server in servers:
            server.stop()
        if nobody is not None:
            nobody.kill()
            nobody.wait()
    assert outlived == [], "virtiofsd outlived its QEMU"


def wait_for(log: Path, text: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        console = log.read_bytes().decode("utf-8", "replace") if log.exists() else ""
        if text in console:
            return console
        if time.monotonic() > deadline:
            pytest.fail(f"no {text!r} on the console after {WAIT:g}s:\n{console[-3000:]}")
        time.sleep(0.5)
