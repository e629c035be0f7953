"""Write a stored disk back out as a sparse raw file.

Zero chunks stay holes (the file is truncated to the virtual size first and
only data chunks are written). Every chunk is verified against its digest as it
is decompressed, so a materialized file is exactly what was captured.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from store import codec
from store.disks import DiskManifest
from store.errors import NotFound
from store.packs import PackReader
from store.progress import Progress, announce_total
from store.repo import Store


def materialize(store: Store, disk: DiskManifest, out: Path, *,
                progress: Progress | None = None, workers: int | None = None,
                durable: bool = True) -> None:
    """Write `disk` to `out` (created or truncated), sparse; fsynced when `durable`.

    Bases must be durable (a VM stands on them after a crash); an export is the
    user's own file, written like cp or qemu-img convert write theirs.

    Raises NotFound if a chunk is missing, Corrupt if one does not match.
    """
    workers = workers or max(2, os.cpu_count() or 2)
    announce_total(progress, sum(disk.chunk_length(i) for i in disk.chunks))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, disk.virtual_size)
        _write_chunks(store, disk, fd, workers, progress)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


Job = tuple[int, str, bytes, int]  # chunk index, hex digest, compressed frame, raw length
BATCH = 8  # chunks per pool task: one future per chunk costs more in locking than decompressing does


def _decode_and_write(jobs: list[Job], fd: int, chunk_size: int) -> int:
    """Decompress, verify and pwrite a batch (positional writes need no ordering); returns bytes written."""
    written = 0
    for index, hex_digest, frame, rawlen in jobs:
        data = codec.decompress(frame, rawlen, bytes.fromhex(hex_digest), what=hex_digest[:16])
        os.pwrite(fd, data, index * chunk_size)
        written += len(data)
    return written


def _write_chunks(store: Store, disk: DiskManifest, fd: int, workers: int,
                  progress: Progress | None) -> None:
    window: deque[Future[int]] = deque()
    batch: list[Job] = []

    def drain(limit: int) -> None:
        while len(window) > limit:
            written = window.popleft().result()
            if progress is not None:
                progress(written)

    with PackReader(store.layout) as packs, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize") as pool:
        for index in sorted(disk.chunks):
            hex_digest = disk.chunks[index]
            location = store.index.get(bytes.fromhex(hex_digest))
            if location is None:
                raise NotFound(f"chunk {hex_digest[:16]} of this disk is missing from the store",
                               hint="run imgtool verify to see which versions are affected")
            batch.append((index, hex_digest, packs.read(location), location.rawlen))
            if len(batch) == BATCH:
                window.append(pool.submit(_decode_and_write, batch, fd, disk.chunk_size))
                batch = []
                drain(workers * 2)
        if batch:
            window.append(pool.submit(_decode_and_write, batch, fd, disk.chunk_size))
        drain(0)
