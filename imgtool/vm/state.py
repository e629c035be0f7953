"""A VM's runtime facts: `state.json` (what the last `vm start` chose) and whether its QEMU is alive.

Kept apart from the runtime (QEMU, QMP, the accelerator) so that capturing a VM's disk, which only
needs to know the VM is stopped, does not import the machinery that runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgtool.home import Home
from imgtool.vm.record import vm_dir

STATE = "state.json"


def read(folder: Path) -> dict[str, Any] | None:
    """The last start's state (pid, accel, ssh_port, qmp, started, qemu_argv), or None."""
    try:
        value = json.loads((folder / STATE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("pid"), int) else None


def qemu_alive(pid: int) -> bool:
    """Whether `pid` is a live QEMU process (a reused pid of another program is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline


def running_state(home: Home, name: str) -> dict[str, Any] | None:
    """The state of a running VM, or None when it is stopped."""
    state = read(vm_dir(home, name))
    return state if state and qemu_alive(int(state["pid"])) else None


def is_running(home: Home, name: str) -> bool:
    return running_state(home, name) is not None
