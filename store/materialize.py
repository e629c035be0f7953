"""Write a stored disk back out as a sparse raw file.

Zero chunks stay holes (the file is truncated to the virtual size first and
only data chunks are written). Every chunk is verified against its digest as it
is decoded, so a materialized file is exactly what was captured. The store lock
is held shared throughout, so no gc or optimize deletes a pack this reads.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from store import codec, direct
from store.disks import DiskManifest
from store.errors import NotFound
from store.packs import Location, PackReader, decode_chunk
from store.progress import Progress, announce_total
from store.repo import Store

BATCH = 8  # chunks per pool task (at least one frame): a future per chunk costs more in locking than decoding


def materialize(store: Store, disk: DiskManifest, out: Path, *,
                progress: Progress | None = None, workers: int | None = None,
                durable: bool = True) -> None:
    """Write `disk` to `out` (created or truncated), sparse; fsynced when `durable`.

    Bases must be durable (a VM stands on them after a crash); an export is the
    user's own file, written like cp or qemu-img convert write theirs.

    Raises NotFound if a chunk is missing, Corrupt if one does not match.
    """
    # One more thread than cores: direct writes wait on the device, and the cores go on decoding meanwhile.
    workers = workers or max(2, os.cpu_count() or 2) + 1
    announce_total(progress, sum(disk.chunk_length(i) for i in disk.chunks))
    with store.reading():
        jobs = _frame_jobs(store, disk)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, disk.virtual_size)
            # Durable: direct writes cost what buffered writes and an fsync cost, without the copy into
            # the cache. Not durable: the page cache is cheaper (docs/DESIGN.md, "Direct I/O, measured").
            writer = direct.PositionalWriter(fd, bypass_cache=durable)
            try:
                _write_frames(store, jobs, writer, disk.chunk_size, workers, progress)
            finally:
                writer.close()
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class FrameJob:
    """One frame to read and decode once, and every place of the disk its chunks go."""

    location: Location  # of the first chunk needed from the frame
    uses: list[tuple[int, bytes, Location]]  # (chunk index, raw digest, where it is in the frame)
    frame: bytes = b""


def _frame_jobs(store: Store, disk: DiskManifest) -> list[FrameJob]:
    """The disk's chunks grouped by the frame that holds them, in the order of their first use."""
    jobs: dict[tuple[str, int], FrameJob] = {}
    for index in sorted(disk.chunks):
        hex_digest = disk.chunks[index]
        raw = bytes.fromhex(hex_digest)
        location = store.index.get(raw)
        if location is None:
            raise NotFound(f"chunk {hex_digest[:16]} of this disk is missing from the store",
                           hint="a verify of the store shows what else it affects")
        job = jobs.setdefault(location.frame, FrameJob(location, []))
        job.uses.append((index, raw, location))
    return list(jobs.values())


def _decode_and_write(packs: PackReader, jobs: list[FrameJob], out: direct.PositionalWriter,
                      chunk_size: int) -> int:
    """Read, decode and verify a batch, then write it (positional writes need no ordering); returns
    bytes written. Chunks that are neighbours on the disk go out as one write (a span's usually are)."""
    pieces: list[tuple[int, direct.Piece]] = []
    for job in jobs:
        job.frame = packs.read(job.location)
        if job.location.encoding == codec.ZSTD:
            data = decode_chunk(job.frame, job.location, job.uses[0][1])
            # A chunk used at several places of the disk is written at each.
            pieces.extend((index * chunk_size, data) for index, _raw, _location in job.uses)
        else:
            end = max(loc.inner + loc.rawlen for _i, _r, loc in job.uses)
            whole = memoryview(codec.decode(job.frame, end, limit=codec.SPAN_BYTES_MAX,
                                            what=job.uses[0][1].hex()[:16]))
            for index, raw, location in job.uses:
                piece = whole[location.inner:location.inner + location.rawlen]
                codec.check(piece, raw, what=raw.hex()[:16])
                pieces.append((index * chunk_size, piece))
        job.frame = b""
    out.write_runs(pieces)
    return sum(len(data) for _offset, data in pieces)


def _write_frames(store: Store, jobs: list[FrameJob], out: direct.PositionalWriter, chunk_size: int, workers: int,
                  progress: Progress | None) -> None:
    window: deque[Future[int]] = deque()
    batch: list[FrameJob] = []

    def drain(limit: int) -> None:
        while len(window) > limit:
            written = window.popleft().result()
            if progress is not None:
                progress(written)

    with PackReader(store.layout) as packs, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="materialize") as pool:
        for job in jobs:
            batch.append(job)
            if sum(len(j.uses) for j in batch) >= BATCH:
                window.append(pool.submit(_decode_and_write, packs, batch, out, chunk_size))
                batch = []
                drain(workers * 2)
        if batch:
            window.append(pool.submit(_decode_and_write, packs, batch, out, chunk_size))
        drain(0)
