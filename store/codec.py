"""Chunk encoding: BLAKE3 of the raw bytes names a chunk, zstd keeps it.

Both libraries release the GIL, so the capture pipeline runs these on a thread
pool. zstd compressors are not thread-safe, hence one per thread.
"""

from __future__ import annotations

import threading

import blake3
import zstandard

from store.errors import Corrupt

LEVEL = 3
_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    comp = getattr(_local, "compressor", None)
    if comp is None:
        comp = zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=False)
        _local.compressor = comp
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = zstandard.ZstdDecompressor()
        _local.decompressor = dec
    return dec


def chunk_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The raw 32-byte BLAKE3 digest of a chunk's uncompressed bytes."""
    return bytes(blake3.blake3(data).digest())


def compress(data: bytes | bytearray | memoryview) -> bytes:
    return bytes(_compressor().compress(data))


def decompress(frame: bytes, rawlen: int, raw_digest: bytes, *, what: str) -> bytes:
    """Decompress a frame and prove it is the chunk it claims to be."""
    try:
        data = _decompressor().decompress(frame, max_output_size=rawlen)
    except zstandard.ZstdError as exc:
        raise Corrupt(f"chunk {what} cannot be decompressed: {exc}", hint="run imgtool verify --deep") from exc
    if len(data) != rawlen or chunk_digest(data) != raw_digest:
        raise Corrupt(f"chunk {what} does not match its digest", hint="run imgtool verify --deep")
    return bytes(data)
