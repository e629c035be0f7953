"""Optimize: rewrite cold packs with the strong encoding, so the store is small at rest.

Capture writes one fast frame per chunk (store/codec.py, INGEST_LEVEL). Here,
packs that still hold such frames are decoded, verified chunk by chunk, and
written again as frames that span SPAN consecutive chunks at STRONG_LEVEL
(measured: docs/DESIGN.md, "Codec, measured"). Chunk names never change, so
manifests, names and VMs are untouched. Like gc's repack, new packs and their
indexes are written before the old index and pack are deleted, under the
exclusive lock (docs/STORE-FORMAT.md, "Optimize").
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from store import codec, fsclock
from store.packs import (
    ChunkIndex,
    Entry,
    Location,
    PackReader,
    PackWriter,
    decode_frame,
    decode_index,
    frames,
    iter_index_files,
)
from store.progress import Progress, announce_total
from store.repo import Store

Span = list[tuple[bytes, bytes]]  # (raw digest, raw bytes) of consecutive chunks for one frame
SAMPLE_PACKS = 4  # packs a dry run compresses to estimate the gain


@dataclass
class Plan:
    indexes: list[Path] = field(default_factory=list)  # indexes of the packs to rewrite
    chunks: int = 0
    raw_bytes: int = 0  # what their chunks hold
    stored_bytes: int = 0  # what their packs take now
    estimated_bytes: int | None = None  # what they would take after (a dry run's estimate)

    def summary(self) -> dict[str, int | None]:
        return {"packs": len(self.indexes), "chunks": self.chunks, "raw_bytes": self.raw_bytes,
                "stored_bytes": self.stored_bytes, "estimated_bytes": self.estimated_bytes}


@dataclass
class Result:
    packs_rewritten: int = 0
    packs_written: int = 0
    chunks: int = 0
    bytes_before: int = 0
    bytes_after: int = 0

    def summary(self) -> dict[str, int]:
        return dict(self.__dict__)


def plan(store: Store, *, min_age: float = 0.0, estimate: bool = False) -> Plan:
    """The cold packs: every pack with a one-chunk frame whose pack file is at least `min_age` s old.

    The caller holds the exclusive lock (a pack listed here must still be there to execute).
    """
    result = Plan()
    now = fsclock.now(store.layout.tmp)  # pack ages by the clock that stamped them
    for index_path in iter_index_files(store.layout):
        pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        pack = store.layout.pack(pack_hex)
        if not any(e.encoding == codec.ZSTD for e in entries) or not pack.exists():
            continue
        if now - pack.stat().st_mtime < min_age:
            continue
        result.indexes.append(index_path)
        result.chunks += len(entries)
        result.raw_bytes += sum(e.rawlen for e in entries)
        result.stored_bytes += pack.stat().st_size
    if estimate and result.indexes:
        result.estimated_bytes = _estimate(store, result)
    return result


def _estimate(store: Store, the_plan: Plan) -> int:
    """Compress a few evenly spread cold packs as optimize would, and scale their ratio up."""
    step = max(1, len(the_plan.indexes) // SAMPLE_PACKS)
    sample = the_plan.indexes[::step][:SAMPLE_PACKS]
    before = after = 0
    span = _span_length(store)
    for index_path in sample:
        pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        before += store.layout.pack(pack_hex).stat().st_size
        chunks = list(_chunks(store, [(pack_hex, entries)], ChunkIndex(), None))
        after += sum(len(_compress(chunks[i:i + span])) for i in range(0, len(chunks), span))
    return round(the_plan.stored_bytes * after / before) if before else the_plan.stored_bytes


def execute(store: Store, the_plan: Plan, *, live: set[bytes] | None = None, progress: Progress | None = None,
            workers: int | None = None) -> Result:
    """Rewrite the planned packs (under the same exclusive lock as the plan).

    With `live`, chunks outside it are dropped as gc would drop them. A damaged frame raises
    Corrupt before anything is deleted.
    """
    result = Result(packs_rewritten=len(the_plan.indexes), bytes_before=the_plan.stored_bytes)
    if not the_plan.indexes:
        return result
    announce_total(progress, the_plan.raw_bytes)
    old = {p.stem for p in the_plan.indexes}
    # The new packs must not count chunks that live only in the packs being rewritten.
    survivors = store.reload_index()
    for raw in [r for r, loc in survivors.locations.items() if loc.pack in old]:
        del survivors.locations[raw]
    writer = PackWriter(store.layout, survivors)
    sources = [decode_index(p.read_bytes(), what=p.name) for p in the_plan.indexes]
    _rewrite(store, sources, writer, live, progress, workers or max(2, os.cpu_count() or 2))
    writer.flush()
    for index_path in the_plan.indexes:  # index first: an index never names a missing pack
        pack = index_path.with_suffix(".pack")
        index_path.unlink(missing_ok=True)
        pack.unlink(missing_ok=True)
    store.reload_index()
    result.packs_written, result.chunks = len(writer.packs), writer.chunks_written
    result.bytes_after = writer.bytes_written
    return result


def _rewrite(store: Store, sources: list[tuple[str, list[Entry]]], writer: PackWriter, live: set[bytes] | None,
             progress: Progress | None, workers: int) -> None:
    """Decode (on this thread), compress spans on the pool, add them to the writer in order."""
    window: deque[tuple[Span, Future[bytes]]] = deque()

    def drain(limit: int) -> None:
        while len(window) > limit:
            span, future = window.popleft()
            frame = future.result()
            chunks = [(raw, len(data)) for raw, data in span]
            if len(span) == 1:
                writer.add(span[0][0], frame, len(span[0][1]))
            else:
                writer.add_span(frame, chunks)
            if progress is not None:
                progress(sum(n for _r, n in chunks))

    span_length, chunk_size = _span_length(store), store.config.chunk_size
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="optimize") as pool:
        span: Span = []
        for raw, data in _chunks(store, sources, writer.index, live):
            span.append((raw, data))
            # Only the last chunk of a span may be short: rebuilding an index cuts spans at chunk_size.
            if len(span) == span_length or len(data) != chunk_size:
                window.append((span, pool.submit(_compress, span)))
                span = []
                drain(workers * 2)
        if span:
            window.append((span, pool.submit(_compress, span)))
        drain(0)


def _chunks(store: Store, sources: list[tuple[str, list[Entry]]], have: ChunkIndex,
            live: set[bytes] | None) -> Iterator[tuple[bytes, bytes]]:
    """Every chunk of the source packs to keep (live, not stored elsewhere), verified, in pack order, once."""
    seen: set[bytes] = set()
    with PackReader(store.layout) as packs:
        for pack_hex, entries in sources:
            for members in frames(entries):
                wanted = [e for e in members
                          if (live is None or e.raw in live) and e.raw not in have and e.raw not in seen]
                if not wanted:
                    continue
                frame = packs.read(Location.of(pack_hex, wanted[0]))
                data = decode_frame(frame, wanted, what=wanted[0].raw.hex()[:16])
                for entry in wanted:
                    piece = data[entry.inner:entry.inner + entry.rawlen]
                    codec.check(piece, entry.raw, what=entry.raw.hex()[:16])
                    seen.add(entry.raw)
                    yield entry.raw, piece


def _compress(span: Span) -> bytes:
    return codec.compress(b"".join(data for _raw, data in span), level=codec.STRONG_LEVEL)


def _span_length(store: Store) -> int:
    return max(1, min(codec.SPAN, codec.SPAN_BYTES_MAX // store.config.chunk_size))
