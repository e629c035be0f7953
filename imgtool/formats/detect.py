"""Format detection from a file's bytes alone (never its name).

Every detector runs on every file, as OpenStack's format inspector does: every
magic qemu's own probes look for (formats we refuse included), ISO 9660/UDF
volume descriptors, and MBR/GPT partition tables. A file that matches more
than one format is refused outright: it is crafted (a polyglot) or would be
read differently by different tools. Two combinations are not polyglots:

- a partition table at the start of a raw disk is the disk's own layout, so a
  file whose only match is "mbr" is raw (its table is checked by partitions.py);
- an ISO with an MBR/GPT in its system area is a hybrid ISO (every bootable
  Linux installer is one), and is an ISO.

Formats found only by their trailer (a fixed VHD's footer, a DMG's koly block)
keep guest data at offset 0, so a partition table or an ISO there is that
guest's content, not a second format.
"""

from __future__ import annotations

import re

from imgtool.errors import UnsafeImage

ISO_DESCRIPTOR_AT = 16 * 2048  # ISO 9660/UDF volume descriptors start at sector 16 (2 KiB sectors)
PROBE_SIZE = ISO_DESCRIPTOR_AT + 4096  # bytes of the file's start that detect_format should be given
TAIL_SIZE = 1024  # bytes of the file's end that detect_format should be given

VDI_SIGNATURE = 0xBEDA107F
MBR_SIGNATURE = b"\x55\xaa"
PARTITION_TABLE = "mbr"  # the pseudo-format of a raw disk's MBR or protective MBR + GPT
GUEST_CONTENT = frozenset({PARTITION_TABLE, "iso"})  # what a disk normally holds at its start

# Magic strings at offset 0, mapped to qemu format names.
_HEAD_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"QFI\xfb", "qcow2"),  # version 1 (legacy "qcow") is refused by the qcow2 checker
    (b"QED\x00", "qed"),
    (b"KDMV", "vmdk"),
    (b"COWD", "vmdk"),
    (b"# Disk DescriptorFile", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
    (b"LUKS\xba\xbe", "luks"),
    (b"WithoutFreeSpace", "parallels"),
    (b"WithouFreSpacExt", "parallels"),
    (b"Bochs Virtual HD Image", "bochs"),
    (b"#!/bin/sh\n#V2.0 Format\n", "cloop"),
)

# Standard identifiers of the volume descriptor at sector 16: ISO 9660 (CD001),
# and UDF's volume recognition sequence (BEA01 first, or NSR02/NSR03 as the peer checks).
_ISO_IDENTIFIERS = (b"CD001", b"BEA01", b"NSR02", b"NSR03")

# qemu's vmdk probe: after comment lines and blank (space-only) lines, a line
# "version=N" makes the file a VMDK descriptor, with or without the banner.
_VMDK_TEXT = re.compile(rb"(?:#[^\n]*\n| *\r?\n)*version=[123]\r?\n")
VMDK_TEXT_PROBE = 4096  # qemu probes 2 KiB; twice that, as before ISO detection made the probe larger

_NAMES = {PARTITION_TABLE: "an MBR/GPT partition table", "iso": "ISO 9660"}


def detect_format(header: bytes, file_size: int, tail: bytes) -> str:
    """Name the format the bytes claim to be, as a qemu format name.

    `header` is the start of the file (give at least PROBE_SIZE bytes, or the
    whole file if smaller), `tail` its last bytes (TAIL_SIZE, or the whole file),
    `file_size` its length. Returns "raw" when no format matches (a raw disk
    with a partition table included). The result may be a format outside
    ACCEPTED_FORMATS ("qed", "luks", "vdi", "iso", ...). Raises UnsafeImage
    when the bytes match several formats.
    """
    return decide(head_matches(header), _tail_matches(file_size, tail))


def decide(head: set[str], tail: set[str]) -> str:
    """One format out of every detector's matches, or UnsafeImage for a polyglot."""
    if tail and head <= GUEST_CONTENT:
        head = set()  # a footer-only format (fixed VHD): offset 0 is its guest's data
    found = head | tail
    if "iso" in found:
        found = found - {PARTITION_TABLE}  # a hybrid ISO
    if found == {PARTITION_TABLE}:
        return "raw"
    if len(found) > 1:
        raise UnsafeImage(
            f"the file matches several formats at once ({describe(found)})",
            hint="such a file is crafted or damaged; different tools would read it differently",
        )
    return found.pop() if found else "raw"


def describe(found: set[str]) -> str:
    return ", ".join(_NAMES.get(name, name) for name in sorted(found))


def head_matches(header: bytes) -> set[str]:
    """Formats identified by the first PROBE_SIZE bytes (a nested disk's guest data included)."""
    found = {name for magic, name in _HEAD_MAGICS if header.startswith(magic)}
    if _VMDK_TEXT.match(header[:VMDK_TEXT_PROBE]):
        found.add("vmdk")
    if len(header) >= 68 and int.from_bytes(header[64:68], "little") == VDI_SIGNATURE:
        found.add("vdi")
    if header[ISO_DESCRIPTOR_AT + 1:ISO_DESCRIPTOR_AT + 6] in _ISO_IDENTIFIERS:
        found.add("iso")
    if is_partition_table(header):
        found.add(PARTITION_TABLE)
    return found


def is_partition_table(header: bytes) -> bool:
    """An MBR signature in sector 0 that is not a FAT boot sector (which carries the same signature).

    Like the peer: a FAT volume boot record has 2 FATs (byte 0x10) and the
    fixed-disk media descriptor 0xF8 (byte 0x15).
    """
    if len(header) < 512 or header[510:512] != MBR_SIGNATURE:
        return False
    return not (header[0x10] == 2 and header[0x15] == 0xF8)


def _tail_matches(file_size: int, tail: bytes) -> set[str]:
    """Formats identified by their last sector: VHD footers and DMG trailers."""
    found: set[str] = set()
    start = file_size - len(tail)  # file offset of tail[0]
    for back in (512, 511):  # 511: the footer of some old Virtual PC images
        at = file_size - back - start
        if at >= 0 and tail[at:].startswith(b"conectix"):
            found.add("vpc")
        if back == 512 and at >= 0 and tail[at:].startswith(b"koly"):
            found.add("dmg")
    return found
