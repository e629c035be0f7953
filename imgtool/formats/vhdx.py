"""VHDX checks (MS-VHDX): headers, region table and metadata, enough to get
the virtual size and to refuse differencing disks.

Refused: a parent locator metadata item or the HasParent flag (a differencing
disk), a pending log (qemu would replay it, writing into the image, when
opened read-write), unknown required regions or metadata items, checksum
failures, and regions or item values that point outside the file. Metadata
items are read as qemu reads them (a fixed size at their offset): their
declared lengths and the physical sector size are not checked, since qemu
opens such images.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from imgtool.errors import UnsafeImage

from ._common import FLATTEN_HINT, Source, claims
from ._crc32c import crc32c

KIB, MIB = 1 << 10, 1 << 20
HEADER_OFFSETS = (64 * KIB, 128 * KIB)
HEADER_SIZE = 4 * KIB
REGION_TABLE_OFFSET = 192 * KIB
TABLE_SIZE = 64 * KIB  # region table and metadata table are both 64 KiB
HEADER_SECTION_END = 1 * MIB
MAX_ENTRIES = 2047
MAX_LOG_SCAN = 64 * MIB
LOG_ENTRY_ALIGN = 4 * KIB

_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
_REGION_TABLE = struct.Struct("<4sIII")
_REGION_ENTRY = struct.Struct("<16sQII")
_METADATA_TABLE = struct.Struct("<8sHH20s")
_METADATA_ENTRY = struct.Struct("<16sIIII")


def _guid(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


BAT_REGION = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
# The items qemu requires, with the bytes it reads of each (their declared lengths are not used).
REQUIRED_ITEMS = {FILE_PARAMETERS: 8, VIRTUAL_DISK_SIZE: 8, VIRTUAL_DISK_ID: 16,
                  LOGICAL_SECTOR_SIZE: 4, PHYSICAL_SECTOR_SIZE: 4}
REGION_REQUIRED = 1
ITEM_REQUIRED = 1 << 2
HAS_PARENT = 1 << 1


@dataclass(frozen=True)
class Region:
    offset: int
    length: int


def check(src: Source) -> int:
    """Validate a VHDX image; return its virtual disk size in bytes."""
    src.require(0, REGION_TABLE_OFFSET + TABLE_SIZE, "the VHDX header section")
    log = _current_header(src)
    bat, metadata = _regions(src, log)
    items = _metadata_items(src, metadata)
    if PARENT_LOCATOR in items:
        raise UnsafeImage("VHDX has a parent locator: it is a differencing disk and qemu would look for "
                          "its parent on this host", hint=FLATTEN_HINT)
    block_size, flags = struct.unpack("<II", _item(src, metadata, items, FILE_PARAMETERS))
    if flags & HAS_PARENT:
        raise UnsafeImage("VHDX file parameters say HasParent: it is a differencing disk", hint=FLATTEN_HINT)
    size = int.from_bytes(_item(src, metadata, items, VIRTUAL_DISK_SIZE), "little")
    src.check_virtual_size(size)
    sector = int.from_bytes(_item(src, metadata, items, LOGICAL_SECTOR_SIZE), "little")
    _item(src, metadata, items, PHYSICAL_SECTOR_SIZE)  # qemu reads it and accepts any value
    _check_geometry(size, block_size, sector, bat)
    return size // sector * sector  # qemu keeps whole logical sectors


def _current_header(src: Source) -> Region:
    """Pick the valid header with the higher sequence number, as qemu does; return its log region."""
    candidates = []
    for offset in HEADER_OFFSETS:
        raw = src.read(offset, HEADER_SIZE, "a VHDX header")
        fields = _HEADER.unpack_from(raw)
        zeroed = raw[:4] + bytes(4) + raw[8:]
        if fields[0] == b"head" and crc32c(zeroed) == fields[1]:
            candidates.append(fields)
    if not candidates:
        raise claims("vhdx", "has no header with a valid signature and checksum")
    candidates.sort(key=lambda f: f[2])
    if len(candidates) == 2 and candidates[0][2] == candidates[1][2] and candidates[0] != candidates[1]:
        raise claims("vhdx", "has two different headers with the same sequence number")
    _sig, _sum, _seq, _file_guid, _data_guid, log_guid, log_version, version, log_length, log_offset = (
        candidates[-1])
    if version != 1 or log_version != 0:
        raise claims("vhdx", f"has header version {version} and log version {log_version} (1 and 0 expected)")
    log = Region(log_offset, log_length)
    src.require(log.offset, log.length, "the VHDX log")
    if any(log_guid) and _log_has_entries(src, log):
        raise UnsafeImage("VHDX has a pending log that qemu would replay (writing into the image) "
                          "or refuse to open read-only",
                          hint="replay it with `qemu-img check -r all` on a trusted machine first")
    return log


def _log_has_entries(src: Source, log: Region) -> bool:
    """Any 4 KiB-aligned slot of the log starting with an entry signature."""
    if log.length > MAX_LOG_SCAN:
        raise claims("vhdx", f"has a {log.length}-byte log (at most {MAX_LOG_SCAN} expected)")
    data = src.read(log.offset, log.length, "the VHDX log")
    return any(data[at:at + 4] == b"loge" for at in range(0, len(data), LOG_ENTRY_ALIGN))


def _regions(src: Source, log: Region) -> tuple[Region, Region]:
    raw = src.read(REGION_TABLE_OFFSET, TABLE_SIZE, "the VHDX region table")
    signature, stored, count, _reserved = _REGION_TABLE.unpack_from(raw)
    if signature != b"regi" or crc32c(raw[:4] + bytes(4) + raw[8:]) != stored or count > MAX_ENTRIES:
        raise claims("vhdx", "has a region table with a wrong signature, checksum or entry count")
    found: dict[bytes, Region] = {}
    used = [Region(0, HEADER_SECTION_END), log]
    for n in range(count):
        guid, offset, length, flags = _REGION_ENTRY.unpack_from(raw, _REGION_TABLE.size + n * 32)
        region = Region(offset, length)
        src.require(offset, length, "a VHDX region")
        if any(_overlap(region, other) for other in used):
            raise claims("vhdx", f"has a region at {offset} overlapping another region or the headers")
        used.append(region)
        if guid in (BAT_REGION, METADATA_REGION):
            if guid in found:
                raise claims("vhdx", "lists a region twice")
            found[guid] = region
        elif flags & REGION_REQUIRED:
            raise claims("vhdx", f"requires region {uuid.UUID(bytes_le=guid)} that qemu does not know")
    if BAT_REGION not in found or METADATA_REGION not in found:
        raise claims("vhdx", "lacks its block allocation table or metadata region")
    return found[BAT_REGION], found[METADATA_REGION]


def _overlap(a: Region, b: Region) -> bool:
    return a.offset < b.offset + b.length and b.offset < a.offset + a.length


def _metadata_items(src: Source, metadata: Region) -> dict[bytes, Region]:
    """Map item GUID to its place (relative to the metadata region)."""
    if metadata.length < TABLE_SIZE:
        raise claims("vhdx", f"has a metadata region of only {metadata.length} bytes")
    raw = src.read(metadata.offset, TABLE_SIZE, "the VHDX metadata table")
    signature, _reserved, count, _rest = _METADATA_TABLE.unpack_from(raw)
    if signature != b"metadata" or count > MAX_ENTRIES:
        raise claims("vhdx", "has a metadata table with a wrong signature or entry count")
    items: dict[bytes, Region] = {}
    for n in range(count):
        guid, offset, length, flags, _ = _METADATA_ENTRY.unpack_from(raw, _METADATA_TABLE.size + n * 32)
        if guid in items:
            raise claims("vhdx", f"lists metadata item {uuid.UUID(bytes_le=guid)} twice")
        if guid not in REQUIRED_ITEMS and guid != PARENT_LOCATOR and flags & ITEM_REQUIRED:
            raise claims("vhdx", f"requires metadata item {uuid.UUID(bytes_le=guid)} that qemu does not know")
        items[guid] = Region(offset, length)
    missing = [uuid.UUID(bytes_le=g) for g in REQUIRED_ITEMS if g not in items]
    if missing:
        raise claims("vhdx", f"lacks required metadata items {', '.join(map(str, missing))}")
    return items


def _item(src: Source, metadata: Region, items: dict[bytes, Region], guid: bytes) -> bytes:
    """The item's value, read as qemu reads it: its fixed size at its offset, whatever length it declares.

    qemu (vhdx_parse_metadata) never looks at an item's length nor checks that it
    lies inside the metadata region, so neither is required here: refusing
    them refused images qemu opens. The bytes read must exist in the file.
    """
    place, want = items[guid], REQUIRED_ITEMS[guid]
    return src.read(metadata.offset + place.offset, want, f"VHDX metadata item {uuid.UUID(bytes_le=guid)}")


def _check_geometry(size: int, block_size: int, sector: int, bat: Region) -> None:
    if not MIB <= block_size <= 256 * MIB or block_size & (block_size - 1):
        raise claims("vhdx", f"has block size {block_size} (a power of two, 1..256 MiB)")
    if sector not in (512, 4096):
        raise claims("vhdx", f"has logical sector size {sector} (512 or 4096)")
    chunk_ratio = (1 << 23) * sector // block_size  # data blocks per sector-bitmap block
    data_blocks = -(-size // block_size)
    entries = data_blocks + (data_blocks - 1) // chunk_ratio if data_blocks else 0
    if entries * 8 > bat.length:
        raise claims("vhdx", f"has a block allocation table of {bat.length} bytes for {entries} entries")
