"""Sanity of a raw disk's partition table: the MBR, and the GPT behind a protective MBR.

The floor is OpenStack's GPT inspector: every MBR entry's boot flag is 0x00
or 0x80; at least one entry is in use; a protective (type 0xEE) entry is entry
0 and alone, starts at CHS 0/2/0 (bytes 00 02 00) and at LBA 1. Past the peer:
a protective MBR must be backed by a GPT header (primary at LBA 1, or the
backup in the last sector, as Linux falls back to it) with the "EFI PART"
signature, a header size of 92 bytes up to one sector, a matching CRC32, and a
partition entry array of bounded size whose CRC32 matches too. Both 512- and
4096-byte logical sectors are tried, since the file does not say which it has.

A table that fails is refused: either the disk is damaged or the file is not
the disk it looks like (the peer's reason for the "no partitions" rule).
"""

from __future__ import annotations

import struct
import zlib

from imgtool.errors import UnsafeImage

from ._common import Source

ENTRIES_AT = 446
ENTRY = struct.Struct("<B3sB3sII")  # boot flag, start CHS, type, end CHS, start LBA, sectors
PROTECTIVE = 0xEE
PROTECTIVE_START_CHS = b"\x00\x02\x00"
GPT_SIGNATURE = b"EFI PART"
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_MIN_HEADER = 92
MAX_ENTRY_ARRAY = 1 << 20  # 8192 entries of 128 bytes; real tables have 128 (16 KiB)
SECTOR_SIZES = (512, 4096)
HINT = ("the partition table is damaged, or the file is not the disk it looks like; "
        "check it with `fdisk -l FILE` and repair it with `gdisk FILE` on a trusted machine")


def check(src: Source) -> None:
    """Refuse an insane MBR (and GPT, behind a protective MBR) at the start of a raw disk."""
    mbr = src.read(0, 512, "the MBR")
    used = []
    for n in range(4):
        boot, start_chs, kind, _end_chs, start_lba, _sectors = ENTRY.unpack_from(mbr, ENTRIES_AT + 16 * n)
        if boot not in (0x00, 0x80):
            raise _insane(f"MBR partition entry {n} has boot flag {boot:#04x} (0x00 or 0x80 expected)")
        if kind == 0:
            continue
        used.append(n)
        if kind == PROTECTIVE:
            if start_chs != PROTECTIVE_START_CHS:
                raise _insane(f"protective MBR entry {n} starts at CHS bytes {start_chs.hex(' ')} "
                              "(00 02 00 expected)")
            if start_lba != 1:
                raise _insane(f"protective MBR entry {n} starts at LBA {start_lba} (1 expected)")
    if not used:
        raise _insane("has an MBR signature but no partition defined in its MBR")
    kinds = [mbr[ENTRIES_AT + 16 * n + 4] for n in used]
    if PROTECTIVE in kinds:
        if used != [0]:
            raise _insane(f"has a protective MBR (GPT) with other partitions beside it (entries "
                          f"{', '.join(map(str, used))}): a hybrid MBR that tools read differently")
        _check_gpt(src)


def _insane(why: str) -> UnsafeImage:
    return UnsafeImage(f"the raw disk {why}", hint=HINT)


def _check_gpt(src: Source) -> None:
    problems = []
    for sector in SECTOR_SIZES:
        for lba, which in ((1, "primary"), (src.size // sector - 1, "backup")):
            problem = _gpt_problem(src, sector, lba)
            if problem is None:
                return
            problems.append(f"{which} at {lba * sector}: {problem}")
    raise _insane(f"has a protective MBR but no valid GPT header ({'; '.join(problems)})")


def _gpt_problem(src: Source, sector: int, lba: int) -> str | None:
    """Why the GPT header at `lba` is not valid, or None if it is."""
    if lba < 1 or (lba + 1) * sector > src.size:
        return "outside the file"
    raw = src.read(lba * sector, sector, "a GPT header")
    (signature, _revision, size, crc, _reserved, my_lba, _alternate, _first, _last, _guid,
     entries_lba, count, entry_size, entries_crc) = GPT_HEADER.unpack_from(raw)
    if signature != GPT_SIGNATURE:
        return "no EFI PART signature"
    if not GPT_MIN_HEADER <= size <= sector:
        return f"header size {size}"
    if zlib.crc32(raw[:16] + bytes(4) + raw[20:size]) != crc:
        return "header CRC32 mismatch"
    if my_lba != lba:
        return f"says it is at LBA {my_lba}"
    if entry_size < 128 or entry_size % 128 or count * entry_size > MAX_ENTRY_ARRAY:
        return f"{count} partition entries of {entry_size} bytes"
    length = count * entry_size
    if entries_lba * sector + length > src.size:
        return "partition entry array outside the file"
    if zlib.crc32(src.read(entries_lba * sector, length, "the GPT partition entries")) != entries_crc:
        return "partition entry array CRC32 mismatch"
    return None
