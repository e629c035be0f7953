"""Fetch chunks from remote packs: whole packs when most of one is needed, else Range GETs.

A whole pack streams through a sha256 check; each chunk (whole or ranged) is decompressed and its
BLAKE3 checked before it is handed on. Memory is bounded by one pack (or one range) per worker.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from imgtool.errors import Corrupt
from imgtool.oci.target import Target
from imgtool.remote.errors import TransferBroken
from imgtool.remote.format import IndexEntry
from store import codec

WHOLE_FRACTION = 0.5  # fetch the whole pack when at least this share of it is needed
MERGE_GAP = 256 << 10  # two wanted frames closer than this share one Range GET
MAX_RANGE = 16 << 20

Verified = tuple[bytes, bytes, int]  # BLAKE3, zstd frame, raw length


@dataclass(frozen=True)
class PackPlan:
    pack: str
    size: int
    entries: list[IndexEntry]  # wanted chunks, by offset, one per BLAKE3
    ranges_only: bool = False  # the pack's other chunks come from elsewhere (a stream on this machine)

    @property
    def wanted(self) -> int:
        return sum(e.clen for e in self.entries)

    @property
    def whole(self) -> bool:
        return not self.ranges_only and self.wanted >= self.size * WHOLE_FRACTION

    def ranges(self) -> list[tuple[int, int, list[IndexEntry]]]:
        """(start, end, entries) spans, merging frames that lie close together."""
        spans: list[tuple[int, int, list[IndexEntry]]] = []
        for entry in self.entries:
            end = entry.offset + entry.clen
            if spans and entry.offset - spans[-1][1] <= MERGE_GAP and end - spans[-1][0] <= MAX_RANGE:
                start, last, members = spans[-1]
                spans[-1] = (start, max(last, end), [*members, entry])
            else:
                spans.append((entry.offset, end, [entry]))
        return spans


def _check(entry: IndexEntry, frame: bytes) -> Verified:
    codec.decompress(frame, entry.rawlen, entry.blake3, what=entry.blake3.hex()[:16])
    return entry.blake3, frame, entry.rawlen


TRANSFER_ATTEMPTS = 3  # a body that broke off (reset, registry restarted) is asked for again, twice


def fetch_pack(target: Target, repo: str, plan: PackPlan) -> list[Verified]:
    """Every wanted chunk of one pack, verified. Raises Corrupt/NotFound/RemoteFailed.

    Nothing of a try that broke off is handed on (results are returned only whole), so a retry
    starts clean; other failures are not retried here (the client already retried requests)."""
    attempt = 1
    while True:
        try:
            return _fetch_pack_once(target, repo, plan)
        except TransferBroken:
            if attempt >= TRANSFER_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
            attempt += 1


def _fetch_pack_once(target: Target, repo: str, plan: PackPlan) -> list[Verified]:
    if plan.whole:
        return list(_from_stream(target.get_blob(repo, plan.pack, size=plan.size), plan.entries))
    found: list[Verified] = []
    for start, end, members in plan.ranges():
        data = target.get_range(repo, plan.pack, start, end - start)
        found.extend(_check(e, data[e.offset - start:e.offset - start + e.clen]) for e in members)
    return found


def _from_stream(pieces: Iterator[bytes], entries: list[IndexEntry]) -> Iterator[Verified]:
    """Cut wanted frames out of a stream in offset order. The stream checks the sha256 at its end,
    and fetch_pack returns nothing before the stream is exhausted, so a pack with wrong bytes
    hands on no chunk at all."""
    buffer = bytearray()
    base = 0  # stream offset of buffer[0]
    pending = deque(entries)
    for piece in pieces:
        buffer += piece
        while pending and pending[0].offset + pending[0].clen <= base + len(buffer):
            entry = pending.popleft()
            start = entry.offset - base
            yield _check(entry, bytes(buffer[start:start + entry.clen]))
        drop = min(pending[0].offset - base, len(buffer)) if pending else len(buffer)
        if drop > 0:  # keep only what a pending frame still needs
            del buffer[:drop]
            base += drop
    if pending:
        raise Corrupt(f"a pack ended before chunk {pending[0].blake3.hex()[:16]}",
                      hint="the remote version is damaged; ask its publisher to push it again")
