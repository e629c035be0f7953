"""Image sources as users type them, dispatched to the right capture.

    path/to/disk.qcow2        a disk file (format from its bytes; --format asserts it)
    blake3:<hex>              a disk already in the store (printed by imgtool capture)
    GALLERY/DEF@X.Y.Z[:SEL]   a version of any local gallery (chunks are shared)
    vm:NAME[:SEL]             a stopped VM (incremental over its version)
    snapshot:VM/SNAP[:SEL]    a snapshot of a VM

SEL picks one disk of a multi-disk source: a LUN (0..63) for a data disk, or `os` for the OS
disk. Without SEL, `capture` takes the OS disk; publish's rules for what an unselected source
brings are in imgtool.gallery.image_versions (they are the user's contract, in `publish --help`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imgtool.capture import vms as vmcapture
from imgtool.capture.disk import Captured, capture_file
from imgtool.errors import InvalidArgument, NotFound
from imgtool.home import Home
from imgtool.vocab import SourceKind
from store import digest as digests
from store.progress import Progress

VM_KINDS = (SourceKind.VM, SourceKind.SNAPSHOT)  # written with their kind as a prefix
MULTI_DISK = (SourceKind.VERSION, *VM_KINDS)
MAX_LUN = 63
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class VersionDisk(Protocol):
    """What capture needs of one disk of a published version (imgtool.gallery.model.Disk has it)."""

    @property
    def lun(self) -> int | None: ...
    @property
    def digest(self) -> str: ...
    @property
    def virtual_size(self) -> int: ...
    @property
    def source(self) -> dict[str, Any]: ...


class VersionDisks(Protocol):
    """The resolver of `G/D@X.Y.Z` sources, passed in by the gallery (capture stands below it):
    the version's label and its disks, OS disk first; NotFound when there is no such version."""

    def __call__(self, ref: str) -> tuple[str, Sequence[VersionDisk]]: ...


@dataclass(frozen=True)
class Source:
    """A parsed source: its kind, what it names, and the disk selected (`selected` False: none written)."""

    kind: SourceKind
    target: str  # path, digest, G/D@X.Y.Z, VM name, or VM/SNAP
    lun: int | None = None  # the data disk selected; None: the OS disk
    selected: bool = False

    def text(self) -> str:
        """The source as the user would write it (with its selector, if any)."""
        prefix = f"{self.kind}:" if self.kind in VM_KINDS else ""
        if not self.selected or self.kind not in MULTI_DISK:
            return prefix + self.target
        return f"{prefix}{self.target}:{'os' if self.lun is None else self.lun}"

    def select(self, lun: int | None) -> Source:
        return Source(self.kind, self.target, lun, True)


def parse_selector(text: str, source: str) -> int | None:
    """`os` -> None (the OS disk); `N` -> LUN N."""
    if text == "os":
        return None
    if not re.fullmatch(r"[0-9]{1,2}", text) or int(text) > MAX_LUN:
        raise InvalidArgument(f"'{text}' in source '{source}' is neither a LUN nor 'os'",
                              hint=f"write :0..:{MAX_LUN} for a data disk or :os for the OS disk, e.g. vm:web:0")
    return int(text)


def _with_selector(kind: SourceKind, rest: str, text: str) -> Source:
    target, sep, sel = rest.rpartition(":")
    if not sep:
        return Source(kind, rest)
    return Source(kind, target, parse_selector(sel, text), True)


def parse(text: str) -> Source:
    """Which kind of source `text` is. Paths are taken as they are (a file name may contain ':')."""
    if text.startswith("vm:"):
        return _with_selector(SourceKind.VM, text[3:], text)
    if text.startswith("snapshot:"):
        return _with_selector(SourceKind.SNAPSHOT, text[9:], text)
    if digests.looks_like(text):
        return Source(SourceKind.DIGEST, text)
    if text.startswith(digests.PREFIX) and not Path(text).exists():
        digests.parse(text)  # a mistyped digest: say so, rather than "no such file"
    if _URL.match(text) and not Path(text).exists():
        raise InvalidArgument(f"'{text}' is a URL; sources are local files, digests, versions or VMs",
                              hint="download it first (e.g. curl -LO URL), then give the file's path")
    if is_file_source(text):
        return Source(SourceKind.FILE, text)
    base, _, after = text.partition("@")
    if ":" in after:
        version, _, sel = after.rpartition(":")
        return Source(SourceKind.VERSION, f"{base}@{version}", parse_selector(sel, text), True)
    return Source(SourceKind.VERSION, text)


def capture_digest(home: Home, text: str) -> Captured:
    disk = home.store.get_disk(text)
    return Captured(digests.full(text), disk.virtual_size, {"kind": "digest"})


def is_file_source(text: str) -> bool:
    """A path that exists, or anything that cannot be another kind of source."""
    if text.startswith(("vm:", "snapshot:")) or digests.looks_like(text):
        return False
    if text.startswith(digests.PREFIX):  # a mistyped digest, unless such a file really exists
        return Path(text).exists()
    return Path(text).exists() or Path(text).is_symlink() or "@" not in text


def data_luns(home: Home, source: Source, *, versions: VersionDisks) -> list[int]:
    """The data disk LUNs a multi-disk source has (checked to exist; nothing is read)."""
    if source.kind == SourceKind.VERSION:
        _label, disks = versions(source.target)
        return [d.lun for d in disks if d.lun is not None]
    if source.kind in VM_KINDS:
        return vmcapture.data_luns(home, source.kind, source.target)
    return []


def capture(home: Home, text: str, *, versions: VersionDisks, fmt: str | None = None,
            progress: Progress | None = None, allow_nested: bool = False) -> Captured:
    """Capture any source given on the command line (see module docstring).

    versions: resolves `G/D@X.Y.Z` sources (imgtool.gallery.lookup.version_disks).
    allow_nested: store a disk whose content starts with an image format header (recorded)."""
    source = parse(text)
    if fmt is not None and source.kind != SourceKind.FILE:
        raise InvalidArgument(f"--format {fmt} applies to disk files, and '{text}' is a {source.kind} source",
                              hint="drop --format: a stored disk's format is known")
    if source.kind in VM_KINDS:
        return vmcapture.capture_vm_source(home, source.kind, source.target, source.lun, progress=progress,
                                           allow_nested=allow_nested)
    if source.kind == SourceKind.DIGEST:
        return capture_digest(home, text)
    if source.kind == SourceKind.FILE:
        return capture_file(home, Path(text), fmt=fmt, progress=progress, allow_nested=allow_nested)
    return _version_disk(source, versions)


def _version_disk(source: Source, versions: VersionDisks) -> Captured:
    name, disks = versions(source.target)
    disk = next((d for d in disks if d.lun == source.lun), None)
    if disk is None:
        luns = ", ".join(str(d.lun) for d in disks if d.lun is not None) or "none"
        raise NotFound(f"version {name} has no data disk at LUN {source.lun}",
                       hint=f"its data disk LUNs: {luns} (imgtool version show {name})")
    return Captured(disk.digest, disk.virtual_size, {**disk.source, "kind": "version", "name": name,
                                                     "lun": disk.lun, "format": disk.source.get("format")})
