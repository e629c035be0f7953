"""Tethered children live as long as the process, whichever thread started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import require_tools

CHILD = textwrap.dedent("""
    import sys, threading, time
    from imgtool.tools import run
    started = []
    worker = threading.Thread(target=lambda: started.append(run.spawn(["sleep", "300"], tethered=True)))
    worker.start()
    worker.join()  # the thread that asked for the child is gone now
    time.sleep(0.5)
    child = started[0]
    print(child.pid, child.alive(), flush=True)
    time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.integration
def test_a_child_started_from_a_finished_thread_lives_and_dies_with_the_process(tmp_path: Path) -> None:
    require_tools("sleep")
    parent = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert parent.stdout is not None
        pid_text, alive = parent.stdout.readline().split()
        pid = int(pid_text)
        assert alive == "True"  # not killed when its starting thread exited
        assert _alive(pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)  # the kernel killed it with the process
    finally:
        parent.kill()
        parent.wait()


EXPORTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from imgtool.guest import fs
    with fs.disk_bytes(Path(sys.argv[1]), "qcow2") as disk:
        print(disk, flush=True)
        time.sleep(300)
""")


def _mounted(path: str) -> bool:
    return any(line.split()[4] == path for line in Path("/proc/self/mountinfo").read_text().splitlines())


@pytest.mark.integration
def test_a_killed_reader_leaves_no_export_daemon_and_no_mount(tmp_path: Path) -> None:
    """A publish or audit killed mid-read must not leave qemu-storage-daemon (and its FUSE mount) behind."""
    require_tools("qemu-img", "qemu-storage-daemon")
    image = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    reader = subprocess.Popen([sys.executable, "-c", EXPORTER, str(image)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert reader.stdout is not None
        mountpoint = reader.stdout.readline().strip()
        assert Path(mountpoint).stat().st_size == 16 << 20  # the export is up: the raw view of the disk
        assert _mounted(mountpoint)
        os.kill(reader.pid, signal.SIGKILL)
        reader.wait(timeout=10)
        deadline = time.monotonic() + 15
        while (_daemons(str(image)) or _mounted(mountpoint)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _daemons(str(image))
        assert not _mounted(mountpoint)  # SIGTERM, not SIGKILL: the daemon unmounted on its way out
    finally:
        reader.kill()
        reader.wait()


def _daemons(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "qemu-storage-daemon" in cmdline and needle in cmdline and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found
