"""Large writes that bypass the page cache (O_DIRECT) where the filesystem takes them.

Measured on the benchmark machine (docs/DESIGN.md, "Direct I/O, measured"): a
buffered write plus fsync of 1.2 GB costs 2.7 CPU-s in the kernel,
copying into the page cache, and 3.2 s of wall; the same bytes with O_DIRECT
cost 0.1 CPU-s and 0.7 s. Capture writes its packs, materialize a VM's base,
once, fsynced, and nothing reads them back soon, so caching them buys nothing.
(An export is not fsynced: there the page cache is cheaper, PositionalWriter's
bypass_cache=False.)

O_DIRECT wants the file offset, the length and the memory address aligned to
the device's block: the bytes are copied into a page-aligned buffer per thread
(a memcpy costs a tenth of the kernel's copy), and whatever is not a whole
number of ALIGN-sized blocks is written the ordinary way (write_all clears the
flag for the tail; PositionalWriter keeps a second, ordinary descriptor). A
filesystem that refuses O_DIRECT (ramfs, some FUSE mounts; tmpfs takes it since
Linux 6.6) gets ordinary writes: same bytes, same durability (callers still
fsync), only slower.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import threading
from collections.abc import Sequence

ALIGN = 4096  # the largest logical block size in common use: aligned to it, any device takes the write
BLOCK = 4 << 20  # bytes per direct write: large enough that the syscall cost vanishes
MIN_DIRECT = 1 << 20  # smaller files (names, records) are not worth the flag changes and the copy
_local = threading.local()
Piece = bytes | bytearray | memoryview


def buffer(size: int, purpose: str = "write") -> mmap.mmap:
    """This thread's page-aligned buffer for `purpose` (anonymous mmap), grown as needed and kept:
    faulting in fresh pages for every call would cost as much as the copy it saves. It is
    overwritten by the next call on the same thread with the same purpose."""
    buffers: dict[str, mmap.mmap] = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(purpose)
    if buf is None or len(buf) < size:
        buf = buffers[purpose] = mmap.mmap(-1, max(size, BLOCK))
    return buf


def aligned(offset: int, view: memoryview) -> bool:
    """Whether an O_DIRECT transfer of `view` at file `offset` meets the alignment rules."""
    if not view.nbytes or offset % ALIGN or view.nbytes % ALIGN or view.readonly:
        return False
    return ctypes.addressof(ctypes.c_char.from_buffer(view)) % ALIGN == 0


def enable(fd: int) -> bool:
    """Turn O_DIRECT on for `fd`; False where the filesystem does not support it."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


def reopen(fd: int, flags: int) -> int | None:
    """The same open file again (not its path, which could name another file by now), with O_DIRECT
    on; None where /proc is missing or the filesystem refuses O_DIRECT."""
    try:
        again = os.open(f"/proc/self/fd/{fd}", flags)
    except OSError:
        return None
    if enable(again):
        return again
    os.close(again)
    return None


def disable(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)


def write_all(fd: int, pieces: Sequence[Piece]) -> None:
    """Append the concatenated `pieces` at `fd`'s offset (a new file opened for writing).

    Whole blocks go out with O_DIRECT when the filesystem allows; the tail, and
    everything on a filesystem that does not, with ordinary writes.
    """
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    if sum(len(v) for v in views) >= MIN_DIRECT and enable(fd):
        views = _write_blocks(fd, views)
        disable(fd)
    _write_buffered(fd, views)


def _write_blocks(fd: int, views: list[memoryview]) -> list[memoryview]:
    """Write whole ALIGN blocks of `views` with O_DIRECT; return what is left to write."""
    with memoryview(buffer(BLOCK)) as buf:
        used = 0
        while views:
            piece = views[0]
            take = min(len(piece), BLOCK - used)
            buf[used:used + take] = piece[:take]
            used += take
            views = views[1:] if take == len(piece) else [piece[take:], *views[1:]]
            if used == BLOCK:
                if not _write_direct(fd, buf[:used]):
                    return [memoryview(bytes(buf[:used])), *views]
                used = 0
        whole = used - used % ALIGN
        if whole and not _write_direct(fd, buf[:whole]):
            whole = 0
        return [memoryview(bytes(buf[whole:used]))]


def _write_direct(fd: int, view: memoryview) -> bool:
    """Write an aligned block with O_DIRECT; False (nothing written) if the filesystem refuses."""
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            if exc.errno == errno.EINVAL and done == 0:
                return False
            raise
        if done % ALIGN:
            raise OSError(errno.EIO, "a direct write ended off a block boundary")
    return True


def _write_buffered(fd: int, views: list[memoryview]) -> None:
    """writev in groups (a pack is thousands of frames), finishing partial writes."""
    views = [v for v in views if len(v)]
    limit = os.sysconf("SC_IOV_MAX")
    while views:
        group = views[:limit]
        written = os.writev(fd, group)
        while group and written >= len(group[0]):
            written -= len(group[0])
            group.pop(0)
            views.pop(0)
        if written:
            views[0] = views[0][written:]


class PositionalWriter:
    """pwrite(data, offset) into one file from many threads, bypassing the page cache for
    aligned pieces (materialize writes whole chunks at chunk offsets) and writing the rest,
    such as a disk's short last chunk, through the ordinary descriptor `fd`.

    With `bypass_cache=False` every write is ordinary: for a file nobody fsyncs, the page cache
    takes the bytes at memory speed and the kernel writes them back after the command returns."""

    def __init__(self, fd: int, *, bypass_cache: bool = True) -> None:
        self.fd = fd
        self.direct = reopen(fd, os.O_WRONLY) if bypass_cache else None
        self.use_direct = self.direct is not None

    def close(self) -> None:
        if self.direct is not None:
            os.close(self.direct)

    def pwrite(self, data: Piece, offset: int) -> None:
        self._write_run([(offset, data)])

    def write_runs(self, pieces: list[tuple[int, Piece]]) -> None:
        """pwrite each (offset, data); neighbours on the file are joined into writes of up to BLOCK
        bytes (one synchronous direct write per chunk would wait on the device for each)."""
        run: list[tuple[int, Piece]] = []
        for offset, data in sorted(pieces, key=lambda p: p[0]):
            if run and (offset != run[-1][0] + len(run[-1][1]) or offset - run[0][0] + len(data) > BLOCK):
                self._write_run(run)
                run = []
            run.append((offset, data))
        if run:
            self._write_run(run)

    def _write_run(self, run: list[tuple[int, Piece]]) -> None:
        """Neighbouring pieces as one direct write when the whole run is aligned; otherwise each
        piece on its own (a run ending in a disk's short last chunk), the ordinary way if need be."""
        start = run[0][0]
        length = run[-1][0] + len(run[-1][1]) - start
        if self.use_direct and length and not (length % ALIGN or start % ALIGN):
            with memoryview(buffer(length)) as buf:
                for offset, data in run:
                    buf[offset - start:offset - start + len(data)] = memoryview(data).cast("B")
                if self._pwrite_direct(buf[:length], start):
                    return
        elif self.use_direct and len(run) > 1:
            for piece in run:
                self._write_run([piece])
            return
        for offset, data in run:
            _pwrite_all(self.fd, memoryview(data), offset)

    def _pwrite_direct(self, view: memoryview, offset: int) -> bool:
        assert self.direct is not None
        try:
            _pwrite_all(self.direct, view, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # The filesystem took the flag but not the writes: ordinary ones from now on. The
            # descriptor stays open until close(), as other threads may be writing through it.
            self.use_direct = False
            return False
        return True


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)
