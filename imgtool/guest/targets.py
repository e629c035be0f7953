"""What `audit` and `vm generalize` work on, as users name it: a disk file, vm:NAME,
snapshot:VM/SNAP, blake3:<digest> or GALLERY/DEF@X.Y.Z (stored disks through their VM base).

A VM must be stopped: QEMU holds its disk and the guest is changing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imgtool import formats
from imgtool.capture import sources
from imgtool.errors import InvalidArgument, NotFound, Refused
from imgtool.gallery import lookup
from imgtool.gallery.galleries import get_definition
from imgtool.home import Home
from imgtool.names import DefinitionRef, check_name
from imgtool.vm import bases
from imgtool.vm import state as vmstate
from imgtool.vm.record import load, vm_dir
from store import atomic
from store import digest as digests
from store.materialize import materialize


@dataclass(frozen=True)
class Target:
    """A disk file and its format, plus the firmware its definition declares (if known)."""

    path: Path
    fmt: str
    firmware: str | None
    vm: str | None = None


def vm_target(home: Home, name: str, lun: int | None = None) -> Target:
    record = load(home, name)
    if vmstate.is_running(home, name):
        raise Refused(f"VM '{name}' is running: its disk is changing",
                      hint=f"stop it first: imgtool vm stop {name}")
    disk = record.disk(lun)
    if disk is None:
        raise NotFound(f"VM '{name}' has no {'OS disk' if lun is None else f'data disk at LUN {lun}'}",
                       hint="check it with imgtool vm show " + name)
    return Target(vm_dir(home, name) / disk.overlay, "qcow2", record.firmware, name)


def _snapshot_target(home: Home, text: str, lun: int | None) -> Target:
    name, _, snap = text.partition("/")
    record = load(home, name)
    overlay = "disk-os.qcow2" if lun is None else f"disk-lun{lun}.qcow2"
    path = vm_dir(home, name) / "snapshots" / check_name(snap, "snapshot") / overlay
    if not path.exists():
        raise NotFound(f"snapshot '{text}' has no {overlay}", hint=f"list snapshots: imgtool vm show {name}")
    return Target(path, "qcow2", record.firmware)


@contextlib.contextmanager
def stored_disk(home: Home, digest: str) -> Iterator[Path]:
    """A stored disk as a raw file: its VM base when one exists (checked), else a temporary copy
    materialized (and verified) for this audit only, so auditing leaves no base behind for gc to find.
    The temporary name carries our pid: if we are killed, gc removes it as a stale base temporary."""
    if bases.path_for(home, digest).exists():
        yield bases.check(home, digest)
        return
    home.bases.mkdir(parents=True, exist_ok=True)
    tmp = atomic.tmp_name(home.bases)
    try:
        materialize(home.store, home.store.get_disk(digest), tmp, durable=False)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def resolve(home: Home, text: str) -> Iterator[Target]:
    """The target named by `text` (with an optional :os / :LUN selector), valid for the block."""
    source = sources.parse(text)
    if source.kind == "vm":
        yield vm_target(home, source.target, source.lun)
    elif source.kind == "snapshot":
        yield _snapshot_target(home, source.target, source.lun)
    elif source.kind == "digest":
        with stored_disk(home, digests.full(source.target)) as path:
            yield Target(path, "raw", None)
    elif source.kind == "version":
        version, _ = lookup.get_version(home, source.target)
        disk = next((d for d in version.disks if d.lun == source.lun), None)
        if disk is None:
            raise NotFound(f"version {source.target} has no data disk at LUN {source.lun}",
                           hint=f"see its disks: imgtool version show {source.target}")
        try:
            firmware: str | None = get_definition(home, DefinitionRef(version.gallery, version.definition)).firmware
        except NotFound:
            firmware = None
        with stored_disk(home, disk.digest) as path:
            yield Target(path, "raw", firmware)
    else:
        path = Path(source.target)
        if not path.exists():
            raise InvalidArgument(f"'{text}' is not a disk file, vm:NAME, snapshot:VM/SNAP or GALLERY/DEF@X.Y.Z",
                                  hint="give an existing disk file or a VM/version name")
        # Untrusted: the same checks as capture (no backing file, no external data file, ...).
        info = formats.inspect(path)
        yield Target(path, info.format, None)
