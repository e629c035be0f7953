"""Capture a VM's disk (`vm:NAME`, `vm:NAME:LUN`) or a snapshot's (`snapshot:NAME/SNAP[:LUN]`).

The VM must be stopped: a running guest's disk is changing under us. Capture
is incremental: only the overlay's own clusters are read (imgtool.capture).
"""

from __future__ import annotations

import re
from pathlib import Path

from imgtool.capture.disk import Captured, capture_overlay
from imgtool.errors import InvalidArgument, NotFound, Refused
from imgtool.home import Home
from imgtool.names import check_name
from imgtool.vm import state as vmstate
from imgtool.vm.record import VmDisk, load, vm_dir
from store.progress import Progress


def _split_lun(text: str) -> tuple[str, int | None]:
    name, sep, lun = text.partition(":")
    if not sep:
        return name, None
    if not re.fullmatch(r"[0-9]{1,2}", lun):
        raise InvalidArgument(f"'{lun}' is not a LUN", hint="write vm:NAME:LUN, e.g. vm:web:0")
    return name, int(lun)


def _disk(disks: tuple[VmDisk, ...], lun: int | None, what: str) -> VmDisk:
    for disk in disks:
        if disk.lun == lun:
            return disk
    raise NotFound(f"{what} has no {'OS disk' if lun is None else f'data disk at LUN {lun}'}",
                   hint="check the LUNs with imgtool vm show")


def capture_vm_source(home: Home, text: str, *, progress: Progress | None = None) -> Captured:
    kind, _, rest = text.partition(":")
    if kind == "vm":
        name, lun = _split_lun(rest)
        record = load(home, name)
        if vmstate.is_running(home, name):
            raise Refused(f"VM '{name}' is running", hint=f"stop it first (imgtool vm stop {name}) or snapshot it")
        disk = _disk(record.disks, lun, f"VM '{name}'")
        overlay = vm_dir(home, name) / disk.overlay
        source = {"kind": "vm", "name": name, "lun": lun}
    else:
        vm_and_snap, lun = _split_lun(rest)
        name, _, snap = vm_and_snap.partition("/")
        record = load(home, name)
        folder = vm_dir(home, name) / "snapshots" / check_name(snap, "snapshot")
        if not folder.is_dir():
            raise NotFound(f"snapshot '{name}/{snap}' does not exist", hint=f"imgtool vm show {name} lists them")
        disk = _disk(record.disks, lun, f"snapshot '{name}/{snap}'")
        overlay = folder / disk.overlay
        source = {"kind": "snapshot", "name": f"{name}/{snap}", "lun": lun}
    source.update({"format": "qcow2", "parent_version": record.image, "parent_record": record.version_digest})
    return capture_overlay(home, overlay, base_digest=disk.base_disk, base_path=Path(disk.base),
                           source=source, progress=progress)
