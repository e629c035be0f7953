"""inspect(): the gate every untrusted image passes before any qemu-img call.

It stats the path (following symlinks) before opening, so a FIFO or device is
refused without ever being opened; opens with O_NONBLOCK and O_NOFOLLOW and
checks that what it opened is the file it stat'ed; then reads the bytes with
pread only. No subprocess, no other file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

from imgtool.errors import InvalidArgument, NotFound, UnsafeImage

from . import partitions, qcow2, vhdx, vmdk, vpc
from ._common import (
    ACCEPTED_FORMATS,
    CONVERT_HINT,
    DEFAULT_MAX_VIRTUAL_SIZE,
    FLATTEN_HINT,
    FORMAT_ALIASES,
    LIMIT_ENV,
    ImageInfo,
    Source,
)
from .detect import PROBE_SIZE, TAIL_SIZE, detect_format, is_partition_table

CHECKERS: dict[str, Callable[[Source], int]] = {
    "qcow2": qcow2.check,
    "vmdk": vmdk.check,
    "vpc": vpc.check,
    "vhdx": vhdx.check,
}

# Formats we recognise and refuse, with why.
REFUSED = {
    "qed": "QED images are refused: the format is deprecated in qemu and can name a backing file",
    "luks": "LUKS-encrypted images are refused: they cannot be read without a key",
    "vdi": "VirtualBox VDI images are not accepted",
    "parallels": "Parallels images are not accepted",
    "bochs": "Bochs images are not accepted",
    "cloop": "cloop images are not accepted",
    "dmg": "Apple DMG images are not accepted",
    "iso": "ISO 9660/UDF images are installation media, not disks, and are not accepted as one",
}
REFUSED_HINTS = {
    **{fmt: CONVERT_HINT for fmt in ("vdi", "parallels", "bochs", "cloop", "dmg")},
    "luks": "decrypt and convert it with `qemu-img convert --object secret,... -O qcow2` on a trusted machine "
            "first",
    "iso": "to use its bytes as a disk anyway, convert it with `qemu-img convert -f raw -O qcow2 FILE.iso "
           "FILE.qcow2` (an ISO inside a disk is ordinary guest content)",
}

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def inspect(path: Path, *, expected: str | None = None, max_virtual_size: int | None = None) -> ImageInfo:
    """Inspect an untrusted image file and return its format and virtual size.

    Reads only the file's own bytes (no subprocess). Raises NotFound (missing),
    InvalidArgument (a directory, unreadable, a bad limit, or `expected` differs
    from what the bytes say), UnsafeImage (anything hostile: not a regular file,
    empty, truncated, a refused format, a backing or external file, a virtual
    size over the limit, structure that does not hold up).
    """
    path = Path(path)  # tolerate a str from untyped callers
    limit = _limit(max_virtual_size)
    expected = FORMAT_ALIASES.get(expected.lower(), expected.lower()) if expected is not None else None
    if expected is not None and expected not in ACCEPTED_FORMATS:
        raise InvalidArgument(f"unknown image format {expected!r}",
                              hint=f"use one of: {', '.join(ACCEPTED_FORMATS)} (vhd is vpc)")
    resolved, before = _stat_regular(path)
    fd = _open_same(resolved, before)
    try:
        fmt, virtual_size = _inspect_fd(fd, limit)
    except UnsafeImage as exc:
        raise UnsafeImage(f"{path}: {exc.message}", hint=exc.hint) from None
    except OSError as exc:  # an I/O error from the disk holding the file, not from its contents
        raise InvalidArgument(f"{path}: cannot be read ({exc.strerror})",
                              hint="check the disk and the file system it is on") from None
    finally:
        os.close(fd)
    if expected is not None and expected != fmt:
        raise InvalidArgument(f"{path}: the bytes say {fmt}, --format said {expected}",
                              hint=f"drop --format, or pass --format {fmt} if that is what you meant")
    return ImageInfo(format=fmt, virtual_size=virtual_size, path=resolved)


def _inspect_fd(fd: int, limit: int) -> tuple[str, int]:
    size = os.fstat(fd).st_size
    if size == 0:
        raise UnsafeImage("the file is empty (0 bytes)", hint="it is not an image; check the upload or copy")
    header = os.pread(fd, PROBE_SIZE, 0)
    tail_length = min(size, TAIL_SIZE)
    tail = os.pread(fd, tail_length, size - tail_length)
    fmt = detect_format(header, size, tail)
    if fmt in REFUSED:
        raise UnsafeImage(f"{REFUSED[fmt]} (accepted: {', '.join(ACCEPTED_FORMATS)})",
                          hint=REFUSED_HINTS.get(fmt, FLATTEN_HINT))
    src = Source(fd, size, fmt, limit)
    if fmt == "raw" and is_partition_table(header):
        partitions.check(src)
    # raw: qemu counts whole sectors, so a ragged last sector reads as zero-padded
    virtual_size = CHECKERS[fmt](src) if fmt in CHECKERS else -(-size // 512) * 512
    src.check_virtual_size(virtual_size)  # every format, raw included
    return fmt, virtual_size


def _limit(value: int | None) -> int:
    if value is None:
        raw = os.environ.get(LIMIT_ENV)
        if raw is None:
            return DEFAULT_MAX_VIRTUAL_SIZE
        try:
            value = int(raw.strip())
        except ValueError:
            raise InvalidArgument(f"{LIMIT_ENV}={raw!r} is not a number of bytes",
                                  hint=f"set {LIMIT_ENV} to a whole number of bytes, e.g. {8 << 40}") from None
    if value <= 0:
        raise InvalidArgument(f"the virtual size limit must be positive, not {value}",
                              hint=f"pass a number of bytes, e.g. {DEFAULT_MAX_VIRTUAL_SIZE}")
    return value


def _stat_regular(path: Path) -> tuple[Path, os.stat_result]:
    """Stat (following symlinks) and refuse anything but a regular file, before any open."""
    try:
        info = os.stat(path)
        resolved = path.resolve(strict=True)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file", hint="check the path") from None
    except PermissionError:
        raise InvalidArgument(f"{path}: cannot be read (permission denied)",
                              hint="check the file's permissions and its directories'") from None
    except OSError as exc:
        raise InvalidArgument(f"{path}: cannot be inspected ({exc.strerror})",
                              hint="check the path (symlink loops, non-directories in it)") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidArgument(f"{path}: is a directory, not an image file", hint="pass the image file itself")
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS if test(info.st_mode)), "not a regular file")
        via = f" (via symlink to {resolved})" if resolved != path.absolute() else ""
        raise UnsafeImage(f"{path}: is {kind}{via}, not a regular file",
                          hint="copy the image into a regular file first")
    return resolved, info


def _open_same(resolved: Path, before: os.stat_result) -> int:
    """Open without blocking or following a swapped-in symlink; insist it is the file we stat'ed."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(resolved, flags)
    except PermissionError:
        raise InvalidArgument(f"{resolved}: cannot be read (permission denied)",
                              hint="check the file's permissions") from None
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NotFound(f"{resolved}: disappeared while being inspected", hint="check the path") from None
        raise UnsafeImage(f"{resolved}: changed while being inspected ({exc.strerror})",
                          hint="make sure nothing else modifies the file, and retry") from None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise UnsafeImage(f"{resolved}: was replaced while being inspected",
                          hint="make sure nothing else modifies the file, and retry")
    return fd
