"""Format detection from a file's bytes alone (never its name).

Every magic qemu's own probes look for is recognised here, including formats
we refuse, so that a file is never called "raw" while qemu would call it
something else. A file matching more than one format is refused outright: it
is either crafted or will be read differently by different tools.
"""

from __future__ import annotations

import re

from imgtool.errors import UnsafeImage

PROBE_SIZE = 4096  # bytes of the file's start that detect_format should be given
TAIL_SIZE = 1024  # bytes of the file's end that detect_format should be given

VDI_SIGNATURE = 0xBEDA107F

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

# qemu's vmdk probe: after comment lines and blank (space-only) lines, a line
# "version=N" makes the file a VMDK descriptor, with or without the banner.
_VMDK_TEXT = re.compile(rb"(?:#[^\n]*\n| *\r?\n)*version=[123]\r?\n")


def detect_format(header: bytes, file_size: int, tail: bytes) -> str:
    """Name the format the bytes claim to be, as a qemu format name.

    `header` is the start of the file (give at least PROBE_SIZE bytes, or the
    whole file if smaller), `tail` its last bytes (TAIL_SIZE, or the whole file),
    `file_size` its length. Returns "raw" when no magic matches. The result may
    be a format outside ACCEPTED_FORMATS ("qed", "luks", "vdi", ...). Raises
    UnsafeImage when the bytes match several formats.
    """
    found = _head_matches(header)
    found |= _tail_matches(file_size, tail)
    if len(found) > 1:
        raise UnsafeImage(
            f"the file matches several formats at once ({', '.join(sorted(found))})",
            hint="such a file is crafted or damaged; different tools would read it differently",
        )
    return found.pop() if found else "raw"


def _head_matches(header: bytes) -> set[str]:
    found = {name for magic, name in _HEAD_MAGICS if header.startswith(magic)}
    if _VMDK_TEXT.match(header):
        found.add("vmdk")
    if len(header) >= 68 and int.from_bytes(header[64:68], "little") == VDI_SIGNATURE:
        found.add("vdi")
    return found


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
