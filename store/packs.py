"""Packs: many small compressed chunks in few files.

Chunks are small (hundreds of KiB) for deduplication, but a store of millions
of tiny files is slow to list, copy and back up, so chunks travel in packs of
about PACK_TARGET bytes (restic and borg do the same).

A pack is the concatenation of zstd frames, one per chunk, named by the BLAKE3
of its bytes. Its index (`.idx`, same name) lists every chunk in it:

    b"IMGIDX01" | pack digest (32) | count (u32 LE)
    count x [chunk digest (32) | offset (u64) | compressed length (u32) | raw length (u32)]
    BLAKE3 of everything above (32)

Write order: pack, then index. A pack without an index is garbage (no chunk in
it is visible); an index is never written before its pack, and gc deletes the
index before the pack, so an index never names a missing pack.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import zstandard

from store import atomic
from store.errors import Corrupt
from store.layout import Layout

MAGIC = b"IMGIDX01"
ENTRY = struct.Struct("<32sQII")
HEAD = struct.Struct("<8s32sI")
PACK_TARGET = 16 << 20


@dataclass(frozen=True)
class Location:
    pack: str  # hex digest of the pack
    offset: int
    clen: int
    rawlen: int


def encode_index(pack_hex: str, entries: list[tuple[bytes, int, int, int]]) -> bytes:
    body = bytearray(HEAD.pack(MAGIC, bytes.fromhex(pack_hex), len(entries)))
    for entry in entries:
        body += ENTRY.pack(*entry)
    body += blake3.blake3(bytes(body)).digest()
    return bytes(body)


def decode_index(data: bytes, *, what: str) -> tuple[str, list[tuple[bytes, int, int, int]]]:
    """Parse and check an index file.

    Raises UnknownFormat for an index a newer imgtool wrote (refuse, never misread),
    DamagedIndex for a checksum or length mismatch (rebuildable from its pack).
    """
    if len(data) >= len(MAGIC) and data[:len(MAGIC)] != MAGIC and data[:6] == MAGIC[:6]:
        raise UnknownFormat(f"pack index {what} has an unknown format {data[:8]!r}",
                            hint="it was written by a newer imgtool: upgrade imgtool to read it")
    if len(data) < HEAD.size + 32 or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise DamagedIndex(f"pack index {what} is damaged (checksum mismatch)",
                           hint="imgtool verify --repair rebuilds it from its pack")
    magic, pack_raw, count = HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise DamagedIndex(f"pack index {what} is not a pack index", hint="imgtool verify --repair rebuilds it")
    if HEAD.size + count * ENTRY.size + 32 != len(data):
        raise DamagedIndex(f"pack index {what} has the wrong length", hint="imgtool verify --repair rebuilds it")
    entries = [ENTRY.unpack_from(data, HEAD.size + i * ENTRY.size) for i in range(count)]
    return pack_raw.hex(), entries


class UnknownFormat(Corrupt):
    """Written by a newer imgtool: refused, never misread."""


class DamagedIndex(Corrupt):
    """A pack index that fails its checksum; its pack can rebuild it."""


class ChunkIndex:
    """Where every stored chunk lives: loaded from all pack indexes."""

    def __init__(self) -> None:
        self.locations: dict[bytes, Location] = {}
        self.damaged: list[Path] = []

    @classmethod
    def load(cls, layout: Layout) -> ChunkIndex:
        """All indexes. A damaged one is skipped (its chunks count as missing: writers store them
        again, readers of what needs them fail with a clear error, verify names it) so that one bad
        file does not stop every command; an index from a newer imgtool is refused."""
        index = cls()
        for path in iter_index_files(layout):
            try:
                pack_hex, entries = decode_index(path.read_bytes(), what=path.name)
            except DamagedIndex:
                index.damaged.append(path)
                continue
            index.add(pack_hex, entries)
        return index

    def add(self, pack_hex: str, entries: list[tuple[bytes, int, int, int]]) -> None:
        for raw, offset, clen, rawlen in entries:
            self.locations.setdefault(raw, Location(pack_hex, offset, clen, rawlen))

    def __contains__(self, raw_digest: bytes) -> bool:
        return raw_digest in self.locations

    def get(self, raw_digest: bytes) -> Location | None:
        return self.locations.get(raw_digest)


def iter_index_files(layout: Layout) -> Iterator[Path]:
    if not layout.packs.exists():
        return
    for sub in sorted(layout.packs.iterdir()):
        if sub.is_dir():
            yield from sorted(p for p in sub.glob("*.idx"))


def iter_pack_files(layout: Layout) -> Iterator[Path]:
    if not layout.packs.exists():
        return
    for sub in sorted(layout.packs.iterdir()):
        if sub.is_dir():
            yield from sorted(p for p in sub.glob("*.pack"))


class PackWriter:
    """Collects compressed chunks and writes them out as packs of ~PACK_TARGET bytes.

    Not thread-safe: one writer per capture, fed from the pipeline's ordered results.
    """

    def __init__(self, layout: Layout, index: ChunkIndex, *, target: int = PACK_TARGET) -> None:
        self.layout = layout
        self.index = index
        self.target = target
        self.frames: list[bytes] = []
        self.entries: list[tuple[bytes, int, int, int]] = []
        self.size = 0
        self.pending: set[bytes] = set()
        self.bytes_written = 0
        self.chunks_written = 0

    def has(self, raw_digest: bytes) -> bool:
        return raw_digest in self.index or raw_digest in self.pending

    def add(self, raw_digest: bytes, frame: bytes, rawlen: int) -> bool:
        """Queue a chunk; False if the store (or this writer) already has it."""
        if self.has(raw_digest):
            return False
        self.entries.append((raw_digest, self.size, len(frame), rawlen))
        self.frames.append(frame)
        self.pending.add(raw_digest)
        self.size += len(frame)
        if self.size >= self.target:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the queued chunks as one pack plus its index (pack first)."""
        if not self.frames:
            return
        hasher = blake3.blake3()
        for frame in self.frames:
            hasher.update(frame)
        pack_hex = hasher.hexdigest()
        # No read-back here: right after writing it would only read the page cache, not the disk.
        # Every frame was hashed before it was queued; verify --deep re-reads packs from disk.
        atomic.write_once(self.layout.pack(pack_hex), list(self.frames))
        atomic.write_once(self.layout.pack_index(pack_hex), [encode_index(pack_hex, self.entries)])
        self.index.add(pack_hex, self.entries)
        self.bytes_written += self.size
        self.chunks_written += len(self.entries)
        self.frames, self.entries, self.size = [], [], 0
        self.pending.clear()


def read_frame(layout: Layout, location: Location) -> bytes:
    fd = os.open(layout.pack(location.pack), os.O_RDONLY)
    try:
        data = os.pread(fd, location.clen, location.offset)
    finally:
        os.close(fd)
    if len(data) != location.clen:
        raise Corrupt(f"pack {location.pack[:16]} is truncated", hint="run imgtool verify --deep")
    return data


class PackReader:
    """Reads frames with one open descriptor per pack (a disk's chunks share few packs)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.fds: dict[str, int] = {}

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def read(self, location: Location) -> bytes:
        fd = self.fds.get(location.pack)
        if fd is None:
            fd = self.fds[location.pack] = os.open(self.layout.pack(location.pack), os.O_RDONLY)
        data = os.pread(fd, location.clen, location.offset)
        if len(data) != location.clen:
            raise Corrupt(f"pack {location.pack[:16]} is truncated", hint="run imgtool verify --deep")
        return data


def rebuild_index(layout: Layout, pack_hex: str) -> int:
    """Rewrite a pack's index from the pack itself; returns the number of chunks.

    The pack must still hash to its name (else Corrupt: nothing in it can be trusted).
    Every frame is decompressed and hashed, so the new index is exact.
    """
    data = layout.pack(pack_hex).read_bytes()
    if blake3.blake3(data).hexdigest() != pack_hex:
        raise Corrupt(f"pack {pack_hex[:16]} is damaged too; its index cannot be rebuilt",
                      hint="re-capture the versions verify lists as affected")
    entries: list[tuple[bytes, int, int, int]] = []
    view, offset = memoryview(data), 0
    while offset < len(data):
        reader = zstandard.ZstdDecompressor().decompressobj()
        raw = reader.decompress(view[offset:])
        clen = len(data) - offset - len(reader.unused_data)
        entries.append((bytes(blake3.blake3(raw).digest()), offset, clen, len(raw)))
        offset += clen
    path = layout.pack_index(pack_hex)
    path.unlink(missing_ok=True)
    atomic.write_once(path, [encode_index(pack_hex, entries)])
    return len(entries)
