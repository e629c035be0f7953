"""Image sources as users type them, dispatched to the right capture.

    path/to/disk.qcow2     a disk file (format from its bytes; --format asserts it)
    blake3:<hex>           a disk already in the store (printed by imgtool capture)
    GALLERY/DEF@X.Y.Z      a version of any local gallery (its OS disk; chunks are shared)
    vm:NAME                a stopped VM's OS disk (incremental over its version)
    snapshot:NAME/SNAP     a snapshot of a VM
"""

from __future__ import annotations

from pathlib import Path

from imgtool.capture import vms as vmcapture
from imgtool.capture.disk import Captured, capture_file
from imgtool.errors import NotFound
from imgtool.gallery import lookup
from imgtool.home import Home
from store import digest as digests
from store.progress import Progress


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


def capture(home: Home, text: str, *, fmt: str | None = None, progress: Progress | None = None) -> Captured:
    """Capture any source given on the command line (see module docstring)."""
    if text.startswith(("vm:", "snapshot:")):
        return vmcapture.capture_vm_source(home, text, progress=progress)
    if digests.looks_like(text):
        return capture_digest(home, text)
    if text.startswith(digests.PREFIX) and not Path(text).exists():
        digests.parse(text)  # a mistyped digest: say so, rather than "no such file"
    if is_file_source(text):
        return capture_file(home, Path(text), fmt=fmt, progress=progress)
    if "@" in text:
        version, _ = lookup.get_version(home, text)
        disk = version.os_disk
        name = f"{version.gallery}/{version.definition}@{version.version}"
        return Captured(disk.digest, disk.virtual_size, {**disk.source, "kind": "version", "name": name,
                                                         "format": disk.source.get("format")})
    raise NotFound(f"source '{text}' is not a file, digest, version or VM",
                   hint="give a disk file path, blake3:<digest>, GALLERY/DEF@X.Y.Z, vm:NAME or snapshot:VM/SNAP")
