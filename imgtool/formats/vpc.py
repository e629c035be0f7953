"""VHD ("vpc") checks: fixed and dynamic disks only.

Refused: differencing disks (type 4) and any dynamic header naming a parent
(parent id, name or locators), footers with a bad checksum, two footer copies
that disagree, and the 511-byte footer of old Virtual PC images (qemu cannot
read those). The virtual size is computed the way qemu does it: from the CHS
geometry for images made by Virtual PC or old qemu, from the "current size"
field for Hyper-V, Disk2vhd, XenServer and newer qemu (creator "qem2").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from imgtool.errors import UnsafeImage

from ._common import FLATTEN_HINT, Source, claims

_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII16sB")
_DYNAMIC = struct.Struct(">8sQQIIII16sI4s512s")
_LOCATOR = struct.Struct(">IIIIQ")
FOOTER_SIZE = 512
DYNAMIC_SIZE = 1024
CHECKSUM_AT = 64  # offset of the footer checksum
DYNAMIC_CHECKSUM_AT = 36
FIXED, DYNAMIC, DIFFERENCING = 2, 3, 4
MAX_GEOMETRY = 65535 * 16 * 255  # qemu then trusts current_size whatever the creator
MAX_SECTORS = 0xFF000000  # qemu refuses VHDs larger than 2040 GiB
SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")


@dataclass(frozen=True)
class Footer:
    version: int
    data_offset: int
    creator_app: bytes
    current_size: int
    cylinders: int
    heads: int
    sectors: int
    disk_type: int

    @classmethod
    def parse(cls, raw: bytes) -> Footer:
        v = _FOOTER.unpack_from(raw)
        return cls(version=v[2], data_offset=v[3], creator_app=v[5], current_size=v[9],
                   cylinders=v[10], heads=v[11], sectors=v[12], disk_type=v[13])

    def qemu_size(self) -> int:
        chs = self.cylinders * self.heads * self.sectors
        if self.creator_app in SIZE_CREATORS or chs == MAX_GEOMETRY:
            return self.current_size // 512 * 512
        return chs * 512


def checksum_ok(raw: bytes, at: int) -> bool:
    """VHD checksum: one's complement of the byte sum with the checksum field zeroed."""
    stored = int.from_bytes(raw[at:at + 4], "big")
    total = sum(raw) - sum(raw[at:at + 4])
    return stored == (~total & 0xFFFFFFFF)


def check(src: Source) -> int:
    """Validate a VHD image; return its virtual size as qemu computes it."""
    footer = _footer(src)
    if footer.disk_type == DIFFERENCING:
        raise UnsafeImage("VHD is a differencing disk: qemu would look for its parent image on this host",
                          hint=FLATTEN_HINT)
    if footer.disk_type not in (FIXED, DYNAMIC):
        raise claims("vpc", f"has disk type {footer.disk_type} (2 fixed, 3 dynamic, 4 differencing)")
    size = footer.qemu_size()
    src.check_virtual_size(max(size, footer.current_size))
    if size > MAX_SECTORS * 512:
        raise claims("vpc", f"has virtual size {size}, more than qemu's VHD maximum of 2040 GiB")
    if footer.disk_type == FIXED:
        src.require(0, size + FOOTER_SIZE, "the fixed disk's data")
    else:
        _check_dynamic(src, footer, size)
    return size


def _footer(src: Source) -> Footer:
    """Pick the footer copy qemu reads: offset 0 if it is there, else the file's last sector."""
    src.require(0, FOOTER_SIZE, "the VHD footer")
    head = src.read(0, FOOTER_SIZE, "the VHD footer copy")
    tail = src.read(src.size - FOOTER_SIZE, FOOTER_SIZE, "the VHD footer")
    if head.startswith(b"conectix"):
        if tail != head:
            raise claims("vpc", "has a footer copy at offset 0 that differs from the footer at the end")
        raw = head
    elif tail.startswith(b"conectix"):
        raw = tail
    else:
        raise claims("vpc", "has its footer 511 bytes from the end (an old Virtual PC layout that "
                            "qemu cannot read)")
    if not checksum_ok(raw, CHECKSUM_AT):
        raise claims("vpc", "has a footer with a wrong checksum")
    footer = Footer.parse(raw)
    if footer.version >> 16 != 1:
        raise claims("vpc", f"has footer format version {footer.version:#x} (1.x expected)")
    if raw is tail and footer.disk_type != FIXED:
        # qemu reads a file with no copy at offset 0 as a fixed disk, whatever the type says
        raise claims("vpc", f"has disk type {footer.disk_type} but no footer copy at offset 0")
    return footer


def _check_dynamic(src: Source, footer: Footer, size: int) -> None:
    raw = src.read(footer.data_offset, DYNAMIC_SIZE, "the dynamic disk header")
    (cookie, _data, table_offset, version, entries, block_size, _sum, parent_id, _stamp, _reserved,
     parent_name) = _DYNAMIC.unpack_from(raw)
    if cookie != b"cxsparse" or not checksum_ok(raw, DYNAMIC_CHECKSUM_AT) or version >> 16 != 1:
        raise claims("vpc", "has a dynamic disk header with a wrong cookie, checksum or version")
    locators = [_LOCATOR.unpack_from(raw, _DYNAMIC.size + 24 * n) for n in range(8)]
    if any(parent_id) or any(parent_name) or any(loc[0] for loc in locators):
        raise UnsafeImage("VHD dynamic header names a parent (parent id, name or locator): it is a "
                          "differencing disk in disguise", hint=FLATTEN_HINT)
    if block_size < 512 or block_size & (block_size - 1):
        raise claims("vpc", f"has block size {block_size} (a power of two of at least 512 expected)")
    if entries > 0x7FFFFFFF // 4 or entries * block_size < size:
        raise claims("vpc", f"has a block table of {entries} entries, too few for a {size}-byte disk")
    src.require(table_offset, entries * 4, "the block allocation table")
