"""Packs: many small compressed chunks in few files, and their indexes.

Chunks are small (hundreds of KiB) for deduplication, but a store of millions
of tiny files is slow to list, copy and back up, so chunks travel in packs of
about PACK_TARGET bytes (restic and borg do the same). The bytes of a pack and
of its index, both index formats and the write order are specified in
docs/STORE-FORMAT.md ("Packs and pack indexes").
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import blake3
import zstandard

from store import atomic, codec
from store.errors import Corrupt
from store.layout import Layout

MAGIC_V1 = b"IMGIDX01"
MAGIC = b"IMGIDX02"
ENTRY_V1 = struct.Struct("<32sQII")
ENTRY = struct.Struct("<32sQIIBI")
HEAD = struct.Struct("<8s32sI")
PACK_TARGET = 16 << 20
_REBUILD_HINT = "a verify with repair rebuilds it from its pack"


class Entry(NamedTuple):
    """One chunk in a pack: its frame is bytes [offset, offset + clen) of the pack; the chunk is
    bytes [inner, inner + rawlen) of what that frame decodes to (inner is 0 for one-chunk frames)."""

    raw: bytes  # BLAKE3 of the chunk's raw bytes
    offset: int
    clen: int
    rawlen: int
    encoding: int = codec.ZSTD
    inner: int = 0


@dataclass(frozen=True)
class Location:
    pack: str  # hex digest of the pack
    offset: int
    clen: int
    rawlen: int
    encoding: int = codec.ZSTD
    inner: int = 0

    @classmethod
    def of(cls, pack_hex: str, entry: Entry) -> Location:
        return cls(pack_hex, entry.offset, entry.clen, entry.rawlen, entry.encoding, entry.inner)

    @property
    def frame(self) -> tuple[str, int]:
        """Which frame holds the chunk: chunks of one span share it."""
        return self.pack, self.offset


def encode_index(pack_hex: str, entries: list[Entry]) -> bytes:
    body = bytearray(HEAD.pack(MAGIC, bytes.fromhex(pack_hex), len(entries)))
    for entry in entries:
        body += ENTRY.pack(*entry)
    body += blake3.blake3(bytes(body)).digest()
    return bytes(body)


def decode_index(data: bytes, *, what: str) -> tuple[str, list[Entry]]:
    """Parse and check an index file (format 1 or 2).

    Raises UnknownFormat for an index a newer release wrote, or one naming an encoding this release
    does not know (refuse, never misread); DamagedIndex for a checksum or length mismatch.
    """
    magic = data[:len(MAGIC)]
    if len(magic) == len(MAGIC) and magic not in (MAGIC, MAGIC_V1) and magic[:6] == MAGIC[:6]:
        raise UnknownFormat(f"pack index {what} has an unknown format {magic!r}",
                            hint="it was written by a newer release: upgrade to read it")
    if len(data) < HEAD.size + 32 or blake3.blake3(data[:-32]).digest() != data[-32:]:
        raise DamagedIndex(f"pack index {what} is damaged (checksum mismatch)", hint=_REBUILD_HINT)
    magic, pack_raw, count = HEAD.unpack_from(data, 0)
    if magic not in (MAGIC, MAGIC_V1):
        raise DamagedIndex(f"pack index {what} is not a pack index", hint=_REBUILD_HINT)
    layout = ENTRY if magic == MAGIC else ENTRY_V1
    if HEAD.size + count * layout.size + 32 != len(data):
        raise DamagedIndex(f"pack index {what} has the wrong length", hint=_REBUILD_HINT)
    entries = [Entry(*layout.unpack_from(data, HEAD.size + i * layout.size)) for i in range(count)]
    for entry in entries:
        if entry.encoding not in codec.ENCODINGS:
            raise UnknownFormat(f"pack index {what} uses frame encoding {entry.encoding}, unknown to this release",
                                hint="it was written by a newer release: upgrade to read it")
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
        file does not stop every command; an index from a newer release is refused."""
        index = cls()
        for path in iter_index_files(layout):
            try:
                pack_hex, entries = decode_index(path.read_bytes(), what=path.name)
            except FileNotFoundError:  # listed, then deleted by a gc: readers that need exactness lock
                continue
            except DamagedIndex:
                index.damaged.append(path)
                continue
            index.add(pack_hex, entries)
        return index

    def add(self, pack_hex: str, entries: list[Entry]) -> None:
        for entry in entries:
            self.locations.setdefault(entry.raw, Location.of(pack_hex, entry))

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
    """Collects compressed frames and writes them out as packs of ~PACK_TARGET bytes.

    A full pack is written (hashed, written, fsynced, then its index) on a background thread while
    the caller goes on queueing the next ones: at most IN_FLIGHT packs are waiting or being written
    (one alone stalled capture whenever a pack's fsyncs took longer than filling the next), and
    `flush` returns only when everything queued is durable and in the index. Not thread-safe for
    adding: one writer per capture, fed from the pipeline's ordered results; `has` may be asked
    from any thread.
    """

    IN_FLIGHT = 3
    THREADS = 2

    def __init__(self, layout: Layout, index: ChunkIndex, *, target: int = PACK_TARGET) -> None:
        self.layout = layout
        self.index = index
        self.target = target
        self.frames: list[bytes] = []
        self.entries: list[Entry] = []
        self.size = 0
        self.pending: set[bytes] = set()
        self.bytes_written = 0
        self.chunks_written = 0
        self.packs: list[str] = []  # hex digests of the packs this writer wrote
        self._writing: deque[_Write] = deque()  # oldest first
        self._thread: ThreadPoolExecutor | None = None

    def has(self, raw_digest: bytes) -> bool:
        return (raw_digest in self.index or raw_digest in self.pending
                or any(raw_digest in write.digests for write in list(self._writing)))

    def add(self, raw_digest: bytes, frame: bytes, rawlen: int) -> bool:
        """Queue a one-chunk frame; False if the store (or this writer) already has the chunk."""
        if self.has(raw_digest):
            return False
        self._queue(frame, [Entry(raw_digest, self.size, len(frame), rawlen)])
        return True

    def add_span(self, frame: bytes, chunks: list[tuple[bytes, int]]) -> None:
        """Queue a frame that decodes to the given (digest, raw length) chunks, in order.

        The caller leaves out chunks the store already has before it compresses the span.
        """
        members, inner = [], 0
        for raw, rawlen in chunks:
            members.append(Entry(raw, 0, 0, rawlen, codec.ZSTD_SPAN, inner))
            inner += rawlen
        self.add_frame(frame, members)

    def add_frame(self, frame: bytes, members: list[Entry]) -> None:
        """Queue a frame as it is (gc's copy), with the entries of the chunks to keep from it."""
        self._queue(frame, [e._replace(offset=self.size, clen=len(frame)) for e in members])

    def _queue(self, frame: bytes, entries: list[Entry]) -> None:
        self.entries.extend(entries)
        self.frames.append(frame)
        self.pending.update(e.raw for e in entries)
        self.size += len(frame)
        if self.size >= self.target:
            self._start()

    def flush(self) -> None:
        """Write what is queued; return when every pack of this writer is durable and indexed."""
        try:
            self._start()
            self._finish(0)
        finally:
            if self._thread is not None:
                self._thread.shutdown()
                self._thread = None

    def _start(self) -> None:
        """Hand the queued frames to the background thread (once fewer than IN_FLIGHT wait)."""
        if not self.frames:
            return
        self._finish(self.IN_FLIGHT - 1)
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=self.THREADS, thread_name_prefix="pack-writer")
        future = self._thread.submit(_write_pack, self.layout, self.frames, self.entries)
        self._writing.append(_Write(self.entries, self.size, self.pending, future))
        self.frames, self.entries, self.size, self.pending = [], [], 0, set()

    def _finish(self, keep: int) -> None:
        """Wait until at most `keep` packs are in flight, indexing each as it completes, in order."""
        while len(self._writing) > keep:
            write = self._writing[0]
            try:
                pack_hex = write.future.result()  # raises what the write raised (a full disk: StorageFull)
            except BaseException:
                self._writing.clear()  # the thread writes the rest; none of it is indexed
                raise
            self.index.add(pack_hex, write.entries)
            self._writing.popleft()
            self.packs.append(pack_hex)
            self.bytes_written += write.size
            self.chunks_written += len(write.entries)


class _Write(NamedTuple):
    entries: list[Entry]
    size: int
    digests: set[bytes]  # the chunks in it, so `has` knows them while they are written
    future: Future[str]


def _write_pack(layout: Layout, frames: list[bytes], entries: list[Entry]) -> str:
    """Write one pack, then its index (write order); returns the pack's digest."""
    hasher = blake3.blake3()
    for frame in frames:
        hasher.update(frame)
    pack_hex = str(hasher.hexdigest())
    # No read-back here: right after writing it would only read the page cache, not the disk.
    # Every frame was hashed before it was queued; a deep verify re-reads packs from disk.
    atomic.write_once(layout.pack(pack_hex), list(frames))
    atomic.write_once(layout.pack_index(pack_hex), [encode_index(pack_hex, entries)])
    return pack_hex


def _truncated(location: Location) -> Corrupt:
    return Corrupt(f"pack {location.pack[:16]} is truncated", hint="a deep verify of the store shows what it affects")


def read_frame(layout: Layout, location: Location) -> bytes:
    fd = os.open(layout.pack(location.pack), os.O_RDONLY)
    try:
        data = os.pread(fd, location.clen, location.offset)
    finally:
        os.close(fd)
    if len(data) != location.clen:
        raise _truncated(location)
    return data


def decode_chunk(frame: bytes, location: Location, raw_digest: bytes) -> bytes:
    """The chunk `location` names, out of its frame, proven to be the chunk `raw_digest` names."""
    what = raw_digest.hex()[:16]
    if location.encoding == codec.ZSTD:
        data = codec.decode(frame, location.rawlen, limit=location.rawlen, what=what)
    else:
        data = codec.decode(frame, location.inner + location.rawlen, limit=codec.SPAN_BYTES_MAX,
                            what=what)[location.inner:]
    codec.check(data, raw_digest, what=what)
    return data


def frames(entries: list[Entry]) -> list[list[Entry]]:
    """Entries grouped by the frame that holds them (one each, or a span's), in pack order."""
    grouped: dict[int, list[Entry]] = {}
    for entry in entries:
        grouped.setdefault(entry.offset, []).append(entry)
    return [grouped[offset] for offset in sorted(grouped)]


def decode_frame(frame: bytes, members: list[Entry], *, what: str) -> bytes:
    """Everything a frame decodes to, up to the end of the last of `members` (not yet verified)."""
    if all(e.encoding == codec.ZSTD for e in members):
        return codec.decode(frame, members[0].rawlen, limit=members[0].rawlen, what=what)
    need = max(e.inner + e.rawlen for e in members)
    return codec.decode(frame, need, limit=codec.SPAN_BYTES_MAX, what=what)


class PackReader:
    """Reads frames with one open descriptor per pack (a disk's chunks share few packs). `read` may be
    called from several threads; `chunk_frame` from one."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.fds: dict[str, int] = {}
        self._opening = threading.Lock()
        self._span: tuple[tuple[str, int], bytes] | None = None  # the last span chunk_frame decoded

    def __enter__(self) -> PackReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def chunk_frame(self, location: Location, raw_digest: bytes) -> bytes:
        """A zstd frame holding exactly this chunk (encoding 0), for whoever copies chunks one by one
        (a push to a remote): its own frame, or, out of a span, the chunk verified and compressed again.
        The last span decoded is kept whole, so the chunks of one span cost one decode."""
        frame = self.read(location)
        if location.encoding == codec.ZSTD:
            return frame
        what = raw_digest.hex()[:16]
        if self._span is None or self._span[0] != location.frame:
            whole = codec.decode(frame, location.inner + location.rawlen, limit=codec.SPAN_BYTES_MAX, what=what,
                                 whole=True)
            self._span = (location.frame, whole)
        data = self._span[1][location.inner:location.inner + location.rawlen]
        codec.check(data, raw_digest, what=what)
        return codec.compress(data, level=codec.FRAME_LEVEL)

    def read(self, location: Location) -> bytes:
        fd = self.fds.get(location.pack)
        if fd is None:
            with self._opening:  # two threads must not both open it (one descriptor would leak)
                fd = self.fds.get(location.pack)
                if fd is None:
                    fd = self.fds[location.pack] = os.open(self.layout.pack(location.pack), os.O_RDONLY)
        data = os.pread(fd, location.clen, location.offset)
        if len(data) != location.clen:
            raise _truncated(location)
        return data


def rebuild_index(layout: Layout, pack_hex: str, *, chunk_size: int | None = None) -> int:
    """Rewrite a pack's index from the pack itself; returns the number of chunks.

    The pack must still hash to its name (else Corrupt: nothing in it can be trusted). Every frame
    is decoded and hashed, so the new index is exact: a frame that decodes to more than one chunk
    is a span, cut at the store's chunk size (optimize spans only whole chunks but the last).
    """
    data = layout.pack(pack_hex).read_bytes()
    if blake3.blake3(data).hexdigest() != pack_hex:
        raise Corrupt(f"pack {pack_hex[:16]} is damaged too; its index cannot be rebuilt",
                      hint="capture again what a verify lists as affected")
    size = chunk_size or _chunk_size(layout)
    entries: list[Entry] = []
    view, offset = memoryview(data), 0
    while offset < len(data):
        reader = zstandard.ZstdDecompressor().decompressobj()
        raw = reader.decompress(view[offset:])
        clen = len(data) - offset - len(reader.unused_data)
        if len(raw) <= size:
            entries.append(Entry(codec.chunk_digest(raw), offset, clen, len(raw)))
        else:
            entries.extend(Entry(codec.chunk_digest(raw[at:at + size]), offset, clen, len(raw[at:at + size]),
                                 codec.ZSTD_SPAN, at) for at in range(0, len(raw), size))
        offset += clen
    path = layout.pack_index(pack_hex)
    path.unlink(missing_ok=True)
    atomic.write_once(path, [encode_index(pack_hex, entries)])
    return len(entries)


def _chunk_size(layout: Layout) -> int:
    try:
        size = json.loads(layout.config.read_bytes())["chunk_size"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"cannot read the chunk size from {layout.config.name}", hint="restore store.json") from exc
    if not isinstance(size, int) or size <= 0:
        raise Corrupt(f"{layout.config.name} has an invalid chunk_size", hint="restore store.json")
    return size
