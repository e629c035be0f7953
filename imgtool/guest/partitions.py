"""Partition tables (MBR and GPT) read from a disk's first sectors. Pure: bytes in, records out.

Only what the audit needs: where each partition starts, how long it is, its type, and whether the
disk carries BIOS boot code or an EFI system partition. Every offset is checked against the disk's
size, so a hostile table cannot send a reader past the end of the disk.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

from imgtool.errors import Corrupt

SECTOR = 512
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
LINUX_GUIDS = {"0fc63daf-8483-4772-8e79-3d69d8477de4", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"}
MBR_ESP = 0xEF
MBR_PROTECTIVE = 0xEE
MBR_EXTENDED = (0x05, 0x0F, 0x85)
MAX_GPT_ENTRIES = 1024
EXT_MAGIC_OFFSET = 1080  # s_magic inside an ext2/3/4 superblock (1024 + 56)


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # MBR: "0x83"; GPT: the type GUID
    bootable: bool = False

    @property
    def is_esp(self) -> bool:
        return self.type in (ESP_GUID, f"0x{MBR_ESP:02x}")


@dataclass(frozen=True)
class Table:
    scheme: str  # "gpt", "mbr" or "none" (a file system on the whole disk)
    partitions: tuple[Partition, ...]
    boot_code: bool  # the MBR's first 440 bytes are not all zero (BIOS boot code)

    def boot_modes(self) -> tuple[str, ...]:
        """Firmware this layout can boot with: uefi needs an ESP; bios needs MBR code (and, on GPT,
        a BIOS boot partition for GRUB's core image)."""
        modes = []
        if self.boot_code and (self.scheme == "mbr"
                               or any(p.type == BIOS_BOOT_GUID for p in self.partitions)):
            modes.append("bios")
        if any(p.is_esp for p in self.partitions):
            modes.append("uefi")
        return tuple(modes)


def read_table(head: bytes, gpt_entries: bytes | None, disk_size: int) -> Table:
    """Parse the table from the disk's first sectors.

    `head` is the first 34 sectors (MBR + GPT header + the usual entry array); `gpt_entries` the entry
    array when it lies elsewhere (see `gpt_entry_span`), else None. Raises Corrupt for a table that
    points outside the disk.
    """
    if len(head) < 2 * SECTOR or head[510:512] != b"\x55\xaa":
        return Table("none", (), False)
    boot_code = any(head[:440])
    mbr = _mbr_entries(head, disk_size)
    if any(p.type == f"0x{MBR_PROTECTIVE:02x}" for p in mbr) and head[SECTOR:SECTOR + 8] == b"EFI PART":
        entries = gpt_entries if gpt_entries is not None else head[2 * SECTOR:]
        return Table("gpt", _gpt_entries(head[SECTOR:2 * SECTOR], entries, disk_size), boot_code)
    return Table("mbr", tuple(mbr), boot_code)


def gpt_entry_span(head: bytes) -> tuple[int, int] | None:
    """(offset, length) in bytes of the GPT entry array named by the header in `head`, if any."""
    if len(head) < 2 * SECTOR or head[SECTOR:SECTOR + 8] != b"EFI PART":
        return None
    lba, count, size = struct.unpack_from("<QII", head, SECTOR + 72)
    if not 0 < count <= MAX_GPT_ENTRIES or size < 128 or size > 4096:
        raise Corrupt(f"GPT header lists {count} entries of {size} bytes", hint="the partition table is damaged")
    return lba * SECTOR, count * size


def _mbr_entries(head: bytes, disk_size: int) -> list[Partition]:
    found = []
    for i in range(4):
        entry = head[446 + 16 * i: 462 + 16 * i]
        kind = entry[4]
        first, count = struct.unpack_from("<II", entry, 8)
        if kind == 0 or count == 0 or kind in MBR_EXTENDED:
            continue  # logical partitions are not followed: no root file system we build lives there
        part = Partition(i + 1, first * SECTOR, count * SECTOR, f"0x{kind:02x}", entry[0] == 0x80)
        if kind != MBR_PROTECTIVE:
            _check_bounds(part, disk_size)
        found.append(part)
    return found


def _gpt_entries(header: bytes, entries: bytes, disk_size: int) -> tuple[Partition, ...]:
    count, size = struct.unpack_from("<II", header, 80)
    if not 0 < count <= MAX_GPT_ENTRIES or size < 128 or len(entries) < count * size:
        raise Corrupt("the GPT entry array is truncated or absurd", hint="the partition table is damaged")
    found = []
    for i in range(count):
        entry = entries[i * size: i * size + 128]
        if not any(entry[:16]):
            continue
        first, last = struct.unpack_from("<QQ", entry, 32)
        if last < first:
            raise Corrupt(f"GPT partition {i + 1} ends before it starts", hint="the partition table is damaged")
        part = Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, str(uuid.UUID(bytes_le=entry[:16])))
        _check_bounds(part, disk_size)
        found.append(part)
    return tuple(found)


def _check_bounds(part: Partition, disk_size: int) -> None:
    if part.start + part.size > disk_size:
        raise Corrupt(f"partition {part.number} ends at byte {part.start + part.size}, past the disk's end "
                      f"({disk_size})", hint="the partition table is damaged or the disk truncated")


def is_ext(superblock_area: bytes) -> bool:
    """Whether the first 2 KiB of a partition hold an ext2/3/4 superblock."""
    return superblock_area[EXT_MAGIC_OFFSET:EXT_MAGIC_OFFSET + 2] == b"\x53\xef"
