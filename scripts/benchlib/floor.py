"""The machine's floor for capture: read a file, BLAKE3 and compress every chunk, on all cores.

This is what capture cannot beat on this machine: the same reads (runs of 8 chunks with O_DIRECT
into each thread's reused page-aligned buffer, on one thread more than cores, as store/ingest.py
and imgtool/tools/diskread.py read), the same hash and the same ingest codec (store.codec of the
code being measured), with nothing written. Run as `python -m benchlib.floor FILE [--write DIR]`
(the page cache dropped first by the caller).

With `--write DIR`, the floor also writes what the codec produced, as capture must: 16 MiB files
written with O_DIRECT and fsynced (store/direct.py, as packs are written) on a writer thread, at
most two in flight, removed afterwards. Nothing else capture does is in it (no pack hash, index,
manifest, bookkeeping or start-up), so on a disk that reads and writes through one queue it is the
machine's floor for capture.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from store import codec, direct
from store.packs import PACK_TARGET

RUN = 8  # chunks per read, as store/ingest.py reads them


def _task(fds: tuple[int, int], offset: int, length: int, chunk: int) -> list[bytes]:
    view = memoryview(direct.buffer(length, "floor"))[:length]
    fast, plain = fds
    # The file's short tail is not block-aligned: it goes the ordinary way, as capture reads it.
    got = os.preadv(fast if direct.aligned(offset, view) else plain, [view], offset)
    assert got == length
    frames = []
    for at in range(0, len(view), chunk):
        piece = view[at:at + chunk]
        codec.chunk_digest(piece)
        frames.append(codec.compress(piece))
    return frames


class _Writer:
    """Writes groups of frames to new files, O_DIRECT and fsynced, on one thread, two in flight."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque[Future[None]] = deque()

    def write(self, frames: list[bytes]) -> None:
        while len(self.pending) >= 2:
            self.pending.popleft().result()
        self.count += 1
        self.pending.append(self.pool.submit(self._one, self.folder / f"{self.count}.out", frames))

    @staticmethod
    def _one(path: Path, frames: list[bytes]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            direct.write_all(fd, frames)
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self) -> None:
        while self.pending:
            self.pending.popleft().result()
        self.pool.shutdown()


def floor(path: str, chunk: int = 128 << 10, write_to: Path | None = None) -> int:
    """Bytes the ingest codec would store for `path`; reads, hashes and compresses all of it, and
    with `write_to` writes those bytes there too."""
    plain = os.open(path, os.O_RDONLY)
    # As capture reads it: with O_DIRECT, or the ordinary way where the filesystem refuses.
    fast = direct.reopen(plain, os.O_RDONLY)
    if fast is None:
        fast = os.dup(plain)
    writer = _Writer(write_to) if write_to is not None else None
    stored, group, size = 0, [], 0
    try:
        total = os.fstat(plain).st_size
        step = RUN * chunk
        workers = max(2, os.cpu_count() or 2) + 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for frames in pool.map(lambda o: _task((fast, plain), o, min(step, total - o), chunk),
                                   range(0, total, step)):
                stored += sum(len(f) for f in frames)
                if writer is not None:
                    group.extend(frames)
                    size += sum(len(f) for f in frames)
                    if size >= PACK_TARGET:  # bytes per written file, as packs are cut
                        writer.write(group)
                        group, size = [], 0
        if writer is not None:
            if group:
                writer.write(group)
            writer.close()
        return stored
    finally:
        os.close(plain)
        os.close(fast)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchlib.floor")
    ap.add_argument("file")
    ap.add_argument("--chunk", type=int, default=128 << 10)
    ap.add_argument("--write", type=Path, help="also write the compressed bytes into a scratch folder here")
    args = ap.parse_args()
    if args.write is None:
        print(floor(args.file, args.chunk))
        return
    scratch = Path(tempfile.mkdtemp(prefix="floor-", dir=args.write))
    try:
        print(floor(args.file, args.chunk, scratch))
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
