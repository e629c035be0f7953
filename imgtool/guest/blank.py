"""A disk that holds nothing: every byte of it reads as zero.

Such a disk provably carries no guest OS, and so no identity: the audit reports it "empty" (a pass),
where any other disk it cannot read is "not audited" (never a pass). The check reads only the extents
`qemu-img map` does not already know to be zero (holes, zero clusters and unallocated ranges of the
whole backing chain are skipped), so a sparse disk costs what it holds, not its virtual size; the first
non-zero byte ends it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from imgtool.tools import qemu_img
from imgtool.tools.qemu_img import Extent

READ = 1 << 20
_ZEROS = memoryview(bytes(READ))


def disk_is_blank(path: Path, fmt: str, view: Path) -> bool:
    """Whether the disk at `path` (format `fmt`, possibly hostile) reads as zeros throughout; `view` is its
    guest-visible bytes (imgtool.guest.fs.disk_bytes)."""
    return all_zero(view, qemu_img.map_extents(path, fmt=fmt))


def all_zero(view: Path, extents: Iterable[Extent]) -> bool:
    """Whether every extent not known to be zero reads as zeros in `view`. An extent the map does not
    call zero is read, whatever else it says: only qemu-img's "zero" lets a range go unread."""
    with open(view, "rb") as handle:
        for extent in extents:
            if not extent.zero and not _range_is_zero(handle, extent.start, extent.length):
                return False
    return True


def _range_is_zero(handle: BinaryIO, start: int, length: int) -> bool:
    handle.seek(start)
    left = length
    while left > 0:
        data = handle.read(min(left, READ))
        if not data:
            return False  # the map described more than the view holds: nothing proves that range zero
        if data != _ZEROS[:len(data)]:
            return False
        left -= len(data)
    return True
