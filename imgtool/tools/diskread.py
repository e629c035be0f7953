"""Reading a disk's guest-visible bytes as fast as the format allows.

qemu-img map (QEMU's own code) says, for every extent, whether it is zero, and
for data stored verbatim (uncompressed, unencrypted) at which offset of which
layer's file it lies. Those bytes are read with pread(2) directly: one copy,
no socket; with O_DIRECT where the offsets and the caller's buffer are
block-aligned (store/direct.py: capture reads each byte once, so filling the
page cache with it costs CPU and evicts what the user had cached). Everything
else (compressed clusters, formats without offsets, unknown content) is read
through a qemu-nbd export, started only if needed, so guest content is always
decoded by QEMU. Encrypted images and external data files never get here:
inspection refuses them.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from imgtool.errors import Corrupt
from imgtool.tools import nbd, run, sockets
from imgtool.tools.qemu_img import Extent
from store import direct
from store.lock import alive

_ZEROS = memoryview(bytes(1 << 20))


@contextlib.contextmanager
def socket_dir() -> Iterator[Path]:
    """A private folder for a qemu-nbd socket, short enough for sun_path.

    It lives in /tmp/imgtool-<uid>/ (a store path may be too long for a socket), so
    no home's gc sees it: folders left by killed captures are pruned here instead,
    by the pid in their name.
    """
    parent = sockets.private_dir()
    for stale in parent.glob("nbd-*"):
        pid = stale.name.split("-")[1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"nbd-{os.getpid()}-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class MappedReader:
    """read(offset, length) over an image, using its map; a context manager; thread-safe.

    `layers` maps chain depth to the file holding that layer (0 = the image;
    1 = its backing file when the caller knows and trusts it).
    """

    def __init__(self, path: Path, *, fmt: str, extents: list[Extent], layers: dict[int, Path],
                 limits: run.Limits | None) -> None:
        self.path, self.fmt, self.limits = path, fmt, limits
        self.extents = extents
        self.starts = [e.start for e in extents]
        self.fds = {depth: os.open(p, os.O_RDONLY) for depth, p in layers.items()}
        self.direct_fds = {depth: again for depth, fd in self.fds.items()
                           if (again := direct.reopen(fd, os.O_RDONLY)) is not None}
        self._to_close = [*self.fds.values(), *self.direct_fds.values()]
        self.sizes = {depth: os.fstat(fd).st_size for depth, fd in self.fds.items()}
        self._stack = contextlib.ExitStack()
        self._export: nbd.Export | None = None
        self._lock = threading.Lock()
        self.direct_bytes = 0  # read by pread from the image's own file, O_DIRECT or not
        self.o_direct_bytes = 0  # of those, read with O_DIRECT
        self.nbd_bytes = 0

    def __enter__(self) -> MappedReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        for fd in self._to_close:
            os.close(fd)
        self.fds, self.direct_fds, self._to_close = {}, {}, []

    def _nbd(self) -> nbd.Export:
        with self._lock:  # read() runs on several threads; start qemu-nbd once
            return self._nbd_locked()

    def _nbd_locked(self) -> nbd.Export:
        if self._export is None:
            work = Path(self._stack.enter_context(socket_dir()))
            self._export = self._stack.enter_context(
                nbd.Export(self.path, fmt=self.fmt, workdir=work, limits=self.limits))
        return self._export

    def _pieces(self, offset: int, length: int) -> Iterator[tuple[Extent, int, int]]:
        end = offset + length
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        while offset < end and i < len(self.extents):
            extent = self.extents[i]
            stop = min(end, extent.end)
            if stop > offset:
                yield extent, offset, stop - offset
                offset = stop
            i += 1
        if offset < end:
            raise Corrupt(f"{self.path}: the map ends at {offset}, before {end}", hint="the image is inconsistent")

    def read(self, offset: int, length: int) -> bytearray:
        buf = bytearray(length)
        self.readinto(offset, memoryview(buf))
        return buf  # a fresh buffer per call: callers may keep views into it

    def readinto(self, offset: int, target: memoryview) -> None:
        """Fill `target` with the guest bytes at `offset` (zero extents are zeroed: buffers are reused)."""
        for extent, start, size in self._pieces(offset, len(target)):
            piece = target[start - offset:start - offset + size]
            fd = self.fds.get(extent.depth)
            if extent.zero:
                _zero(piece)
            elif extent.data and extent.offset is not None and fd is not None:
                self._pread(fd, extent, start, piece)
            else:
                self._nbd().readinto(start, piece)
                self.nbd_bytes += size

    def _pread(self, fd: int, extent: Extent, start: int, target: memoryview) -> None:
        assert extent.offset is not None
        host = extent.offset + (start - extent.start)
        if host + len(target) > self.sizes[extent.depth]:
            raise Corrupt(f"{self.path}: data mapped past the end of its file",
                          hint="the image is truncated or inconsistent")
        fast = self.direct_fds.get(extent.depth)
        if fast is not None and direct.aligned(host, target) and self._read_direct(fast, extent.depth, host, target):
            return
        got = os.preadv(fd, [target], host)
        if got != len(target):
            raise Corrupt(f"{self.path}: short read at {host}", hint="the image is truncated")
        self.direct_bytes += got

    def _read_direct(self, fd: int, depth: int, host: int, target: memoryview) -> bool:
        try:
            got = os.preadv(fd, [target], host)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self.direct_fds.pop(depth, None)  # took the flag, not the reads: ordinary ones from now on
            return False
        if got != len(target):
            raise Corrupt(f"{self.path}: short read at {host}", hint="the image is truncated")
        self.direct_bytes += got
        self.o_direct_bytes += got
        return True


def _zero(view: memoryview) -> None:
    for at in range(0, len(view), len(_ZEROS)):
        part = view[at:at + len(_ZEROS)]
        part[:] = _ZEROS[:len(part)]
