"""Chunk encodings: BLAKE3 of the raw bytes names a chunk, zstd keeps it.

How frames are laid out and which encodings exist is written in
docs/STORE-FORMAT.md ("Frame encodings"); why these levels, in docs/DESIGN.md
("Codec, measured"). Ingest writes one fast frame per chunk; `optimize`
rewrites cold packs as frames that span several chunks at a high level.

Both libraries release the GIL, so capture and materialize run these on a
thread pool. zstd contexts are not thread-safe, hence one per thread.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from store.errors import Corrupt

ZSTD = 0  # one zstd frame holding exactly one chunk (the only encoding of index format 1)
ZSTD_SPAN = 1  # one zstd frame holding several consecutive chunks; the entry says where in it
ENCODINGS = {ZSTD: "zstd", ZSTD_SPAN: "zstd-span"}
INGEST_LEVEL = -20  # capture: as fast as the machine can read and hash (measured: docs/DESIGN.md)
STRONG_LEVEL = 9  # optimize: the best ratio that still decodes faster than qemu-img convert writes
FRAME_LEVEL = 3  # a chunk taken out of a span to travel alone (a push to a remote): the old per-chunk level
SPAN = 32  # chunks per optimized frame (4 MiB at 128 KiB chunks)
SPAN_BYTES_MAX = 64 << 20  # no frame decodes to more (optimize writes at most SPAN chunks)
_local = threading.local()
_HINT = "a deep verify of the store shows what it affects"


def _compressor(level: int) -> zstandard.ZstdCompressor:
    cache: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("compressors", {})
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The raw 32-byte BLAKE3 digest of a chunk's uncompressed bytes."""
    return bytes(blake3.blake3(data).digest())


def compress(data: bytes | bytearray | memoryview, *, level: int = INGEST_LEVEL) -> bytes:
    return bytes(_compressor(level).compress(data))


def decode(frame: bytes, need: int, *, limit: int, what: str, whole: bool = False) -> bytes:
    """The first `need` decoded bytes of one zstd frame (a chunk, or a span up to a chunk's end);
    with `whole`, everything the frame holds (at least `need`).

    The frame's declared content size must lie in [need, limit] before anything is decoded: zstd
    allocates what the header claims, so a hostile header must not choose how much memory we take.
    """
    if limit > SPAN_BYTES_MAX:  # an index entry claiming a chunk larger than any frame may decode to
        raise Corrupt(f"chunk {what}: its index claims {limit} bytes", hint=_HINT)
    try:
        declared = zstandard.frame_content_size(frame)
        if not need <= declared <= limit:
            raise Corrupt(f"chunk {what}: its frame declares {declared} bytes, its index {need}", hint=_HINT)
        # A span decodes only up to the end of the chunk asked for.
        if whole:
            need = declared
        data = _decompressor().decompress(frame) if declared == need else _prefix(frame, need)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"chunk {what} cannot be decompressed: {exc}", hint=_HINT) from exc
    if len(data) != need:
        raise Corrupt(f"chunk {what} is shorter than its index says", hint=_HINT)
    return bytes(data)


def _prefix(frame: bytes, need: int) -> bytes:
    parts: list[bytes] = []
    got = 0
    with _decompressor().stream_reader(frame) as reader:
        while got < need:
            part = reader.read(need - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
    return b"".join(parts)


def check(data: bytes | memoryview, raw_digest: bytes, *, what: str) -> None:
    if chunk_digest(data) != raw_digest:
        raise Corrupt(f"chunk {what} does not match its digest", hint=_HINT)


def decompress(frame: bytes, rawlen: int, raw_digest: bytes, *, what: str) -> bytes:
    """Decode a one-chunk frame and prove it is the chunk it claims to be."""
    data = decode(frame, rawlen, limit=rawlen, what=what)
    check(data, raw_digest, what=what)
    return data
