"""Capture a VM's disk (`vm:NAME[:LUN|:os]`) or a snapshot's (`snapshot:NAME/SNAP[:LUN|:os]`).

The VM must be stopped: a running guest's disk is changing under us. Capture
is incremental: only the overlay's own clusters are read (imgtool.capture).
"""

from __future__ import annotations

from pathlib import Path

from imgtool.capture.disk import Captured, capture_overlay
from imgtool.errors import InvalidArgument, NotFound, Refused
from imgtool.home import Home
from imgtool.names import check_name
from imgtool.vm import state as vmstate
from imgtool.vm.record import VmDisk, VmRecord, is_streaming, load, vm_dir
from store.progress import Progress


def _disk(disks: tuple[VmDisk, ...], lun: int | None, what: str, name: str) -> VmDisk:
    for disk in disks:
        if disk.lun == lun:
            return disk
    luns = ", ".join(str(d.lun) for d in disks if d.lun is not None) or "none"
    raise NotFound(f"{what} has no {'OS disk' if lun is None else f'data disk at LUN {lun}'}",
                   hint=f"its data disk LUNs: {luns} (imgtool vm show {name})")


def _snapshot_folder(home: Home, target: str) -> tuple[VmRecord, Path]:
    name, sep, snap = target.partition("/")
    if not sep:
        raise InvalidArgument(f"'snapshot:{target}' is not snapshot:VM/SNAP", hint="e.g. snapshot:web1/before-upgrade")
    record = load(home, name)
    folder = vm_dir(home, name) / "snapshots" / check_name(snap, "snapshot")
    if not folder.is_dir():
        raise NotFound(f"snapshot '{name}/{snap}' does not exist", hint=f"imgtool vm snapshot list {name}")
    return record, folder


def data_luns(home: Home, kind: str, target: str) -> list[int]:
    """The data disk LUNs of a VM or snapshot (a snapshot has the disks of its VM)."""
    record = load(home, target) if kind == "vm" else _snapshot_folder(home, target)[0]
    return [d.lun for d in record.disks if d.lun is not None]


def capture_vm_source(home: Home, kind: str, target: str, lun: int | None, *,
                      progress: Progress | None = None, allow_nested: bool = False) -> Captured:
    vm_name = target if kind == "vm" else target.partition("/")[0]
    if is_streaming(home, vm_name):  # its base's chunks are not all here, and the store lacks its disk manifest
        raise Refused(f"VM '{vm_name}' still streams its version: its base is not all here yet",
                      hint=f"imgtool vm hydrate {vm_name} --wait, then capture again (imgtool publish does it)")
    if kind == "vm":
        record = load(home, target)
        if vmstate.is_running(home, target):
            raise Refused(f"VM '{target}' is running; its disks are changing",
                          hint=f"stop it first: imgtool vm stop {target}")
        disk = _disk(record.disks, lun, f"VM '{target}'", target)
        overlay = vm_dir(home, target) / disk.overlay
    else:
        record, folder = _snapshot_folder(home, target)
        disk = _disk(record.disks, lun, f"snapshot '{target}'", record.name)
        overlay = folder / disk.overlay
    source = {"kind": kind, "name": target, "lun": lun, "format": "qcow2", "parent_version": record.image,
              "parent_record": record.version_digest}
    return capture_overlay(home, overlay, base_digest=disk.base_disk, base_path=Path(disk.base),
                           source=source, progress=progress, allow_nested=allow_nested)
