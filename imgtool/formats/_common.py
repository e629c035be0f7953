"""Shared pieces of the image inspector: the result type, limits and a bounded reader.

`Source` is the only way the format checkers touch the file: every read is a
`pread` on one already-open descriptor, bounded by the size taken from `fstat`,
so a checker can neither follow a path nor read more than it asks for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import UnsafeImage
from imgtool.vocab import DiskFormat, values

ACCEPTED_FORMATS = values(DiskFormat)
DEFAULT_MAX_VIRTUAL_SIZE = 4 << 40  # 4 TiB
LIMIT_ENV = "IMGTOOL_MAX_VIRTUAL_SIZE"

FLATTEN_HINT = "flatten it with `qemu-img convert -O qcow2` on a trusted machine first"
# A whole image in a format we do not take: nothing to flatten, only to convert.
CONVERT_HINT = "convert it to qcow2 with `qemu-img convert -O qcow2 FILE FILE.qcow2` on a trusted machine first"
# Names people use for an accepted format, and qemu's name for it (the help says VHD; qemu says vpc).
FORMAT_ALIASES = {"vhd": "vpc"}
DAMAGED_HINT = (
    "the file is damaged or crafted; get a fresh copy, or "
    "convert it with `qemu-img convert -O qcow2` on a trusted machine first"
)


@dataclass(frozen=True)
class ImageInfo:
    """What inspection established about an image it accepted."""

    format: str  # qemu-img format name: "raw", "qcow2", "vmdk", "vpc", "vhdx"
    virtual_size: int  # bytes, guest-visible (as qemu computes it)
    path: Path  # the resolved path that was inspected


def human(size: int) -> str:
    """A short binary-unit rendering of a byte count, for messages."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} EiB"


def claims(fmt: str, why: str, hint: str = DAMAGED_HINT) -> UnsafeImage:
    """A file whose magic says `fmt` but whose structure does not hold up."""
    return UnsafeImage(f"the file claims to be {fmt} but {why}", hint=hint)


def limit_error(fmt: str, size: int, limit: int) -> UnsafeImage:
    return UnsafeImage(
        f"{fmt} virtual size {human(size)} ({size} bytes) exceeds the limit of "
        f"{human(limit)} ({limit} bytes)",
        hint=f"if you trust this image, raise the limit with {LIMIT_ENV}=<bytes>",
    )


class Source:
    """Bounded, read-only access to the bytes of one open regular file.

    `read` returns exactly the bytes asked for or raises UnsafeImage (truncated);
    `read_padded` mirrors qemu, which sees zeros past the end of a file.
    """

    def __init__(self, fd: int, size: int, fmt: str, limit: int) -> None:
        self.fd = fd
        self.size = size
        self.fmt = fmt
        self.limit = limit

    def read(self, offset: int, length: int, what: str) -> bytes:
        self.require(offset, length, what)
        data = os.pread(self.fd, length, offset)
        if len(data) != length:  # the file shrank under us
            raise self.truncated(offset, length, what)
        return data

    def read_padded(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, max(0, min(length, self.size - offset)), offset) if offset < self.size else b""
        return data + bytes(length - len(data))

    def require(self, offset: int, length: int, what: str) -> None:
        """Raise unless [offset, offset+length) lies inside the file."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise self.truncated(offset, length, what)

    def truncated(self, offset: int, length: int, what: str) -> UnsafeImage:
        return claims(
            self.fmt,
            f"is truncated: {what} needs bytes {offset}..{offset + length} "
            f"and the file has only {self.size}",
        )

    def check_virtual_size(self, size: int) -> None:
        if size > self.limit:
            raise limit_error(self.fmt, size, self.limit)
