"""Warm states on disk: where they live, their record, and the check that one fits a VM.

    <home>/warm/<version digest hex>/<cpus>c-<memory>m/
        warm.json        the record (below); written last inside the folder
        state.zst        QEMU's device state (`migrate exec:`), zstd-compressed
        ram              the guest RAM as the template left it (mapped copy-on-write by each VM)
        disk-os.qcow2    the template's overlays as they were at the pause, frozen (0400);
        disk-lunN.qcow2  each VM starts from a copy, over the same base
        ovmf-vars.fd     UEFI only: the template's variables

A warm state is made in `.tmp-<pid>-...` next to its final name and renamed into place whole, so
a killed `version warm` leaves only a temporary folder, which nothing reads and gc removes once its
writer is gone. Every file is 0600 (0400 for the frozen disks) in 0700 folders: the RAM holds
whatever the template had in memory.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool.errors import Corrupt, NotFound, Refused
from imgtool.home import Home
from imgtool.records import Fields, check_record
from store import atomic
from store.lock import alive, file_lock

WARM = "warm"
RECORD = "warm.json"
STATE = "state.zst"
RAM = "ram"
VARS = "ovmf-vars.fd"
KIND = "imgtool.warm-state"
FORMAT = 1
_FIELDS = {"version", "version_digest", "cpus", "memory_mib", "firmware", "arch", "accel", "cpu_model", "machine",
           "qemu_binary", "qemu_version", "devices", "disks", "created", "seconds"}


@dataclass(frozen=True)
class WarmDisk:
    lun: int | None
    overlay: str  # file name in the warm folder
    base_disk: str  # the disk digest its backing base holds


@dataclass(frozen=True)
class WarmRecord:
    version: str  # G/D@X.Y.Z
    version_digest: str
    cpus: int
    memory_mib: int
    firmware: str
    arch: str
    accel: str
    cpu_model: str
    machine: str  # resolved, e.g. pc-q35-7.2
    qemu_binary: str  # resolved path
    qemu_version: str  # first line of --version
    devices: tuple[str, ...]
    disks: tuple[WarmDisk, ...]
    created: str
    seconds: float  # how long version warm took, boot included

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "format": FORMAT, "version": self.version, "version_digest": self.version_digest,
                "cpus": self.cpus, "memory_mib": self.memory_mib, "firmware": self.firmware, "arch": self.arch,
                "accel": self.accel, "cpu_model": self.cpu_model, "machine": self.machine,
                "qemu_binary": self.qemu_binary, "qemu_version": self.qemu_version, "devices": list(self.devices),
                "disks": [{"lun": d.lun, "overlay": d.overlay, "base_disk": d.base_disk} for d in self.disks],
                "created": self.created, "seconds": round(self.seconds, 1)}

    @classmethod
    def from_json(cls, obj: Any, what: str) -> WarmRecord:
        f = Fields(check_record(obj, kind=KIND, fmt=FORMAT, fields=_FIELDS, what=what), what)
        seconds = obj.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise Corrupt(f"{what}: field 'seconds' must be a number", hint="run imgtool version warm again")
        return cls(version=f.text("version"), version_digest=f.text("version_digest"), cpus=f.integer("cpus"),
                   memory_mib=f.integer("memory_mib"), firmware=f.text("firmware"), arch=f.text("arch"),
                   accel=f.text("accel"), cpu_model=f.text("cpu_model"), machine=f.text("machine"),
                   qemu_binary=f.text("qemu_binary"), qemu_version=f.text("qemu_version"), devices=f.texts("devices"),
                   disks=f.each("disks", _disk), created=f.text("created"), seconds=float(seconds))


def _disk(obj: dict[str, Any], what: str) -> WarmDisk:
    f = Fields(obj, what)
    overlay = f.text("overlay")
    if "/" in overlay or overlay.startswith("."):
        raise Corrupt(f"{what}: overlay {overlay!r} is not a plain file name", hint="run imgtool version warm again")
    return WarmDisk(f.opt_integer("lun"), overlay, f.text("base_disk"))


def root(home: Home) -> Path:
    return home.root / WARM


def key(cpus: int, memory_mib: int) -> str:
    return f"{cpus}c-{memory_mib}m"


def version_dir(home: Home, version_digest: str) -> Path:
    return root(home) / version_digest.split(":", 1)[-1]


def state_dir(home: Home, version_digest: str, cpus: int, memory_mib: int) -> Path:
    return version_dir(home, version_digest) / key(cpus, memory_mib)


def lock_path(folder: Path) -> Path:
    """The lock of one warm state: held while it is replaced or deleted, and by a `vm new --warm` from
    reading its record until the VM exists, so a VM never gets one state's disks and another's RAM."""
    return folder.parent / f".{folder.name}.lock"


@dataclass(frozen=True)
class Found:
    folder: Path
    record: WarmRecord

    def size(self) -> int:
        """Bytes on disk (allocated blocks: the RAM file is sparse where the guest never wrote)."""
        return tree_size(self.folder)

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {"cpus": record.cpus, "memory_mib": record.memory_mib, "machine": record.machine,
                "qemu_version": record.qemu_version, "accel": record.accel, "firmware": record.firmware,
                "created": record.created, "seconds": record.seconds, "bytes": self.size()}


def tree_size(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def read(folder: Path) -> WarmRecord:
    path = folder / RECORD
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"no warm state at {folder}", hint="make one with imgtool version warm G/D@X.Y.Z") from None
    except (OSError, ValueError) as exc:
        raise Corrupt(f"warm state record {path} is unreadable: {exc}", hint="rebuild it: imgtool version warm "
                                                                              "G/D@X.Y.Z") from None
    return WarmRecord.from_json(obj, f"warm state {path}")


def list_for(home: Home, version_digest: str) -> list[Found]:
    """The finished warm states of one version, smallest size first (damaged ones are skipped)."""
    folder = version_dir(home, version_digest)
    found = []
    for sub in sorted(folder.iterdir()) if folder.is_dir() else []:
        if sub.name.startswith(atomic.TMP_PREFIX) or not (sub / RECORD).is_file():
            continue
        try:
            found.append(Found(sub, read(sub)))
        except (Corrupt, NotFound):
            continue
    return sorted(found, key=lambda f: (f.record.cpus, f.record.memory_mib))


def install(tmp: Path, final: Path) -> None:
    """Put a finished temporary folder in place of `final` (replacing an older state of the same size).

    Under the state's lock: a `vm new --warm` sees the old state or the new one, never a mix.
    """
    old = None
    with file_lock(lock_path(final)):
        if final.exists():
            old = final.parent / f"{atomic.TMP_PREFIX}{os.getpid()}-old-{final.name}"
            os.rename(final, old)
        os.rename(tmp, final)
        atomic.fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def delete(home: Home, version_digest: str, cpus: int | None, memory_mib: int | None) -> list[Path]:
    """Remove a version's warm states (all, or the one of that size); returns what was removed."""
    targets = [f.folder for f in list_for(home, version_digest)
               if (cpus is None or f.record.cpus == cpus) and (memory_mib is None or f.record.memory_mib == memory_mib)]
    for folder in targets:
        doomed = folder.parent / f"{atomic.TMP_PREFIX}{os.getpid()}-deleting-{folder.name}"
        with file_lock(lock_path(folder)):
            os.rename(folder, doomed)  # gone at once for readers; the bytes follow
        shutil.rmtree(doomed, ignore_errors=True)
    return targets


def collectable(home: Home, live_versions: set[str]) -> list[tuple[Path, str]]:
    """Warm folders gc removes, with the reason: a version that is gone or revoked (not in `live_versions`,
    digests without the algorithm), and temporary folders whose writer is dead."""
    found: list[tuple[Path, str]] = []
    top = root(home)
    for version in sorted(top.iterdir()) if top.is_dir() else []:
        if version.name not in live_versions:
            found.append((version, "its version is deleted or revoked"))
            continue
        for sub in sorted(version.iterdir()):
            if sub.name.startswith(atomic.TMP_PREFIX) and not _writer_alive(sub.name):
                found.append((sub, "a half-made warm state whose writer is gone"))
    return found


def _writer_alive(name: str) -> bool:
    pid = name[len(atomic.TMP_PREFIX):].split("-", 1)[0]
    return pid.isdigit() and alive(int(pid))


@dataclass(frozen=True)
class Facts:
    """What a VM restored now would get; each must equal the warm state's."""

    qemu_binary: str
    qemu_version: str
    firmware: str
    cpu_model: str
    accel: str
    devices: tuple[str, ...]


def mismatches(record: WarmRecord, facts: Facts) -> list[str]:
    """Each difference between a warm state and what a VM would get now, said plainly (empty: it fits)."""
    pairs = [("QEMU binary", record.qemu_binary, facts.qemu_binary),
             ("QEMU version", record.qemu_version, facts.qemu_version), ("firmware", record.firmware, facts.firmware),
             ("CPU model", record.cpu_model, facts.cpu_model), ("accelerator", record.accel, facts.accel),
             ("device set", ", ".join(record.devices), ", ".join(facts.devices))]
    return [f"{what} was {then!r}, now {now!r}" for what, then, now in pairs if then != now]


def check_fits(record: WarmRecord, facts: Facts) -> None:
    """Refused when the state would not load (or would load wrongly) into the VM QEMU would start now."""
    found = mismatches(record, facts)
    if found:
        raise Refused(f"the warm state of {record.version} ({record.cpus} vCPUs, {record.memory_mib} MiB) does not "
                      f"fit this host: {'; '.join(found)}",
                      hint=f"rebuild it: imgtool version warm {record.version} --cpus {record.cpus} "
                           f"--memory {record.memory_mib}")
