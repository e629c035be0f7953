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
