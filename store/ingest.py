"""Ingest a disk: read the chunks that may hold data, hash and compress them in
parallel, write new ones into packs, then write the disk manifest.

The caller decides which chunks to read (from qemu-img map) and which to reuse
from an earlier disk manifest (incremental capture of a VM overlay); the store
only sees offsets and bytes. Reading, hashing and compression all run on the
pool (pread, BLAKE3 and zstd release the GIL), so the reader must be
thread-safe; the calling thread only collects results in order and queues them
into packs, which the pack writer writes on its own thread. Chunks are
compressed with the fast ingest level (store/codec.py); `optimize` recompresses
cold packs later.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from store import codec, direct
from store.disks import DiskManifest
from store.packs import PackWriter
from store.progress import Progress, announce_total
from store.repo import Store

# read(offset, length) is called from pool threads (it must be thread-safe) and returns a fresh buffer;
# read_into(offset, view) fills a pool thread's own page-aligned buffer, which the next run reuses (no
# allocation, and the reader may use O_DIRECT into it: store/direct.py).
Chunk = bytes | bytearray | memoryview
Reader = Callable[[int, int], Chunk]
ReadInto = Callable[[int, memoryview], None]
_ZERO_DIGESTS: dict[int, bytes] = {}  # BLAKE3 of an all-zero chunk, per length
Encoded = tuple[bytes, bytes | None] | None  # (raw digest, frame or None if already stored), None if zero
RUN = 8  # contiguous chunks per pool task (1 MiB at 128 KiB chunks)


@dataclass(frozen=True)
class IngestResult:
    digest: str
    manifest: DiskManifest
    chunks_read: int
    chunks_new: int
    bytes_read: int
    bytes_stored: int  # compressed bytes this ingest added to the store


def zero_digest(length: int) -> bytes:
    found = _ZERO_DIGESTS.get(length)
    if found is None:
        found = _ZERO_DIGESTS.setdefault(length, codec.chunk_digest(bytes(length)))
    return found


def _read_and_encode(read_into: ReadInto, run: list[tuple[int, int]], chunk_size: int,
                     writer: PackWriter) -> list[Encoded]:
    """One pool task: read a run of contiguous chunks with one call, then hash/compress each.

    Reading happens here, on the pool, so reads overlap with hashing and compression and
    the chunks are views into the run's buffer (no copy per chunk). Nothing returned refers
    to the buffer (digests and frames are new bytes), so a reused buffer is safe.
    """
    first = run[0][0] * chunk_size
    total = sum(length for _index, length in run)
    buffer = memoryview(direct.buffer(total, "ingest"))[:total]
    read_into(first, buffer)
    encoded = []
    for index, length in run:
        start = index * chunk_size - first
        encoded.append(_encode(buffer[start:start + length], writer))
    return encoded


def _copying(read: Reader) -> ReadInto:
    def read_into(offset: int, view: memoryview) -> None:
        data = read(offset, len(view))
        if len(data) != len(view):
            raise ValueError(f"the reader returned {len(data)} bytes at {offset}, not {len(view)}")
        view[:] = memoryview(data).cast("B")
    return read_into


def runs(indexes: list[int], limit: int) -> list[list[int]]:
    """Sorted indexes grouped into runs of at most `limit` contiguous chunks."""
    found: list[list[int]] = []
    for index in indexes:
        if found and index == found[-1][-1] + 1 and len(found[-1]) < limit:
            found[-1].append(index)
        else:
            found.append([index])
    return found


def _encode(data: Chunk, writer: PackWriter) -> Encoded:
    """Hash one chunk; compress it only if the store lacks it. None for all-zero.

    Zero chunks are recognised by their digest: the hash is needed anyway, and it
    works on views, where a byte comparison would not be a fast memcmp.
    """
    raw = codec.chunk_digest(data)
    if raw == zero_digest(len(data)):
        return None
    if writer.has(raw):
        return raw, None
    return raw, codec.compress(data)


def ingest(
    store: Store,
    *,
    virtual_size: int,
    read: Reader | None = None,
    read_into: ReadInto | None = None,
    indexes: Iterable[int],
    reused: dict[int, str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> IngestResult:
    """Store a disk and return its manifest digest. The caller holds `store.writing()`.

    Chunks listed in `indexes` are read and stored; chunks in `reused` keep the
    given digest without being read (they must already be in the store); all
    others are zero. Nothing is named here: the manifest is unreachable until
    the caller points a name at it. Give `read` or `read_into`, not both.
    """
    if read_into is None:
        if read is None:
            raise TypeError("ingest needs read or read_into")
        read_into = _copying(read)
    chunk_size = store.config.chunk_size
    indexes = list(indexes)
    announce_total(progress, sum(min(chunk_size, virtual_size - i * chunk_size) for i in indexes))
    chunks: dict[int, str] = dict(reused or {})
    writer = store.pack_writer()
    # One more thread than cores: one of them is usually waiting on a read (direct reads have
    # no readahead), and the cores stay busy hashing and compressing meanwhile.
    workers = workers or max(2, os.cpu_count() or 2) + 1
    window: deque[tuple[list[tuple[int, int]], Future[list[Encoded]]]] = deque()
    stats = {"read": 0, "bytes": 0}

    def drain(limit: int) -> None:
        while len(window) > limit:
            members, future = window.popleft()
            for (index, length), encoded in zip(members, future.result(), strict=True):
                chunks.pop(index, None)
                if encoded is not None:
                    raw, frame = encoded
                    if frame is not None:
                        writer.add(raw, frame, length)
                    chunks[index] = raw.hex()
                if progress is not None:
                    progress(length)

    # One future per run of up to RUN chunks: a future per chunk costs more in locking than hashing does.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest") as pool:
        for run in runs(sorted(indexes), RUN):
            members = [(i, min(chunk_size, virtual_size - i * chunk_size)) for i in run]
            stats["read"] += len(members)
            stats["bytes"] += sum(length for _i, length in members)
            window.append((members, pool.submit(_read_and_encode, read_into, members, chunk_size, writer)))
            drain(workers * 4)
        drain(0)
    writer.flush()
    manifest = DiskManifest(virtual_size, chunk_size, chunks)
    digest = store.put_manifest(manifest.to_json())
    return IngestResult(digest, manifest, stats["read"], writer.chunks_written, stats["bytes"],
                        writer.bytes_written)


def chunk_indexes(ranges: Iterable[tuple[int, int]], chunk_size: int) -> list[int]:
    """The sorted chunk indexes touched by (start, length) byte ranges."""
    found: set[int] = set()
    for start, length in ranges:
        if length <= 0:
            continue
        found.update(range(start // chunk_size, (start + length - 1) // chunk_size + 1))
    return sorted(found)
