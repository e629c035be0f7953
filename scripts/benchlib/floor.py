"""The machine's floor for capture: read a file, BLAKE3 and compress every chunk, on all cores.

This is what capture cannot beat on this machine: the same reads (1 MiB preads, as capture reads
runs of 8 chunks), the same hash and the same ingest codec (store.codec of the code being measured),
on a pool of as many threads as cores, with nothing written. Run as
`python -m benchlib.floor FILE [CHUNK]` (the page cache dropped first by the caller).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from store import codec

RUN = 8  # chunks per read, as store/ingest.py reads them


def _task(fd: int, offset: int, length: int, chunk: int) -> int:
    view = memoryview(os.pread(fd, length, offset))
    stored = 0
    for at in range(0, len(view), chunk):
        piece = view[at:at + chunk]
        codec.chunk_digest(piece)
        stored += len(codec.compress(piece))
    return stored


def floor(path: str, chunk: int = 128 << 10) -> int:
    """Bytes the ingest codec would store for `path`; reads, hashes and compresses all of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        step = RUN * chunk
        workers = max(2, os.cpu_count() or 2)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return sum(pool.map(lambda o: _task(fd, o, min(step, size - o), chunk), range(0, size, step)))
    finally:
        os.close(fd)


if __name__ == "__main__":
    print(floor(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
