"""Capture a VM or a VM snapshot (placeholder until the VM module lands)."""

from __future__ import annotations

from imgtool.capture import Captured, Progress
from imgtool.errors import NotFound
from imgtool.home import Home


def capture_vm_source(home: Home, text: str, *, progress: Progress | None = None) -> Captured:
    raise NotFound(f"{text}: VMs are not available yet", hint="capture a disk file instead")
