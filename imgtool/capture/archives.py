"""Compressed files and archives given where a disk image was expected.

A gzip, xz, zstd or bzip2 stream (or a tar or zip archive) has no disk-image magic, so format
detection calls it "raw", and it would be stored as a disk of compressed bytes that boots nothing.
Its own magic is recognised here and refused, with the command that unpacks it.
"""

from __future__ import annotations

import os
from pathlib import Path

from imgtool.errors import InvalidArgument

# (offset, magic, name, how to unpack it)
_MAGICS: tuple[tuple[int, bytes, str, str], ...] = (
    (0, b"\x1f\x8b\x08", "gzip-compressed", "gunzip -k {path}"),
    (0, b"\xfd7zXZ\x00", "xz-compressed", "unxz -k {path}"),
    (0, b"\x28\xb5\x2f\xfd", "zstd-compressed", "unzstd {path}"),
    (0, b"PK\x03\x04", "a zip archive", "unzip {path}"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "7z x {path}"),
    (257, b"ustar", "a tar archive", "tar xf {path}"),
)
_BZIP2_BLOCK = b"\x31\x41\x59\x26\x53\x59"  # after "BZh1".."BZh9": the first block's magic (pi)
HEAD = 512


def what_archive(head: bytes) -> tuple[str, str] | None:
    """(what it is, how to unpack it) if `head` (the file's first bytes) starts a compressed stream."""
    for offset, magic, name, unpack in _MAGICS:
        if head[offset:offset + len(magic)] == magic:
            return name, unpack
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[3:4] != b"0" and head[4:10] == _BZIP2_BLOCK:
        return "bzip2-compressed", "bunzip2 -k {path}"
    return None


def refuse_archive(path: Path) -> None:
    """InvalidArgument if the regular file at `path` is compressed or an archive (call after inspection)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return  # inspection already said what is wrong with the path
    try:
        head = os.pread(fd, HEAD, 0)
    finally:
        os.close(fd)
    found = what_archive(head)
    if found:
        name, unpack = found
        raise InvalidArgument(f"{path} is {name}, not a disk image",
                              hint=f"unpack it first ({unpack.format(path=path)}), then give the disk image inside")
