"""The machine's floor for capture: read a file, BLAKE3 and compress every chunk, on all cores.

This is what capture cannot beat on this machine: the same reads (runs of 8 chunks with O_DIRECT
into each thread's reused page-aligned buffer, on one thread more than cores, as store/ingest.py
and imgtool/tools/diskread.py read), the same hash and the same ingest codec (store.codec of the
code being measured), with nothing written. Run as `python -m benchlib.floor FILE [CHUNK]` (the
page cache dropped first by the caller).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

from store import codec, direct

RUN = 8  # chunks per read, as store/ingest.py reads them


def _task(fds: tuple[int, int], offset: int, length: int, chunk: int) -> int:
    view = memoryview(direct.buffer(length, "floor"))[:length]
    fast, plain = fds
    # The file's short tail is not block-aligned: it goes the ordinary way, as capture reads it.
    got = os.preadv(fast if direct.aligned(offset, view) else plain, [view], offset)
    assert got == length
    stored = 0
    for at in range(0, len(view), chunk):
        piece = view[at:at + chunk]
        codec.chunk_digest(piece)
        stored += len(codec.compress(piece))
    return stored


def floor(path: str, chunk: int = 128 << 10) -> int:
    """Bytes the ingest codec would store for `path`; reads, hashes and compresses all of it."""
    plain = os.open(path, os.O_RDONLY)
    fast = os.open(path, os.O_RDONLY)
    if not direct.enable(fast):  # as capture does where the filesystem refuses O_DIRECT
        os.close(fast)
        fast = os.dup(plain)
    try:
        size = os.fstat(plain).st_size
        step = RUN * chunk
        workers = max(2, os.cpu_count() or 2) + 1
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return sum(pool.map(lambda o: _task((fast, plain), o, min(step, size - o), chunk),
                                range(0, size, step)))
    finally:
        os.close(plain)
        os.close(fast)


if __name__ == "__main__":
    print(floor(sys.argv[1], *(int(a) for a in sys.argv[2:3])))
