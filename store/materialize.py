"""Write a stored disk back out as a sparse raw file.

Zero chunks stay holes (the file is truncated to the virtual size first and
only data chunks are written). Every chunk is verified against its digest as it
is decompressed, so a materialized file is exactly what was captured.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from store import codec
from store.disks import DiskManifest
from store.errors import NotFound
from store.packs import read_frame
from store.repo import Store


def materialize(store: Store, disk: DiskManifest, out: Path, *,
                progress: Callable[[int], None] | None = None, workers: int | None = None) -> None:
    """Write `disk` to `out` (created or truncated), sparse, fsynced.

    Raises NotFound if a chunk is missing, Corrupt if one does not match.
    """
    workers = workers or max(2, os.cpu_count() or 2)
    set_total = getattr(progress, "set_total", None)
    if callable(set_total):  # a progress bar that can show a percentage
        set_total(sum(disk.chunk_length(i) for i in disk.chunks))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, disk.virtual_size)
        _write_chunks(store, disk, fd, workers, progress)
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_chunks(store: Store, disk: DiskManifest, fd: int, workers: int,
                  progress: Callable[[int], None] | None) -> None:
    window: deque[tuple[int, Future[bytes]]] = deque()

    def drain(limit: int) -> None:
        while len(window) > limit:
            index, future = window.popleft()
            data = future.result()
            os.pwrite(fd, data, index * disk.chunk_size)
            if progress is not None:
                progress(len(data))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize") as pool:
        for index in sorted(disk.chunks):
            hex_digest = disk.chunks[index]
            raw = bytes.fromhex(hex_digest)
            location = store.index.get(raw)
            if location is None:
                raise NotFound(f"chunk {hex_digest[:16]} of this disk is missing from the store",
                               hint="run imgtool verify to see which versions are affected")
            frame = read_frame(store.layout, location)
            window.append((index, pool.submit(codec.decompress, frame, location.rawlen, raw, what=hex_digest[:16])))
            drain(workers * 4)
        drain(0)
