"""Changing a stopped VM after `vm new`: its port forwards and the size of its OS disk.

Both change the receipt (`vm.json`) under the VM's name lock, and only while the VM is stopped:
QEMU fixes its forwards and its disks' sizes when it starts. A disk only grows: shrinking an
overlay would cut off whatever the guest's file system keeps at its end.

Growing writes the overlay first (qemu-img resize) and the receipt second. Killed between the
two, the overlay is larger than the receipt says (QEMU boots it at the overlay's size either way);
a grow reads the overlay's own size with qemu-img, so running it again corrects the receipt.
"""

from __future__ import annotations

import dataclasses

from imgtool.clock import stamp
from imgtool.errors import InvalidArgument, NotFound, Refused
from imgtool.home import Home
from imgtool.tools import qemu_img
from imgtool.vm import options
from imgtool.vm import state as vmstate
from imgtool.vm.record import Forward, VmRecord, load, save, vm_dir
from store.lock import file_lock


def _stopped(home: Home, name: str, what: str) -> VmRecord:
    record = load(home, name)
    if vmstate.is_running(home, name):
        raise Refused(f"VM '{name}' is running; {what} changes while it is stopped",
                      hint=f"imgtool vm stop {name}, then change it (and imgtool vm start {name})")
    return record


def set_forwards(home: Home, name: str, forwards: tuple[Forward, ...]) -> VmRecord:
    """Replace a stopped VM's extra port forwards (the SSH forward is always there); () removes them all."""
    checked = options.check_forwards(forwards)
    with file_lock(home.vms / f".{name}.lock"):
        record = _stopped(home, name, "its port forwarding")
        updated = dataclasses.replace(record, forwards=checked, updated=stamp())
        save(home, updated)
    return updated


def grow_disk(home: Home, name: str, size: int) -> VmRecord:
    """Grow a stopped VM's OS disk to `size` bytes (its overlay; the base is shared and stays).

    Refuses a smaller size than the disk has now (no shrinking) and a disk it cannot find. The
    guest's file system grows at its next boot where cloud-init's growpart runs (docs/GUIDE.md).
    """
    with file_lock(home.vms / f".{name}.lock"):
        record = _stopped(home, name, "its disk size")
        disk = record.disk(None)
        overlay = vm_dir(home, name) / disk.overlay if disk else None
        if disk is None or overlay is None or not overlay.is_file():
            raise NotFound(f"VM '{name}' has no OS disk overlay to grow",
                           hint=f"delete the VM (imgtool vm delete {name}) and create it again")
        current = qemu_img.info(overlay, fmt="qcow2", limits=None).virtual_size
        if size < current:
            raise InvalidArgument(f"--disk-size {size} bytes is smaller than VM '{name}''s OS disk ({current} "
                                  "bytes); a disk only grows",
                                  hint=f"give at least {-(-current // (1 << 20))}M")
        if size > current:
            qemu_img.resize(overlay, fmt="qcow2", size=size)
        disks = tuple(dataclasses.replace(d, virtual_size=size) if d.lun is None else d for d in record.disks)
        updated = dataclasses.replace(record, disks=disks, updated=stamp())
        save(home, updated)
    return updated
