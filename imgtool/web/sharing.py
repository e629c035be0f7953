"""Bytes shared between versions, from the disks' chunk lists and the store's chunk index.

A version's chunks are the union of its disks' chunks; its stored bytes are their compressed lengths
(each chunk counted once). Between versions of a definition the page shows, for each version, the
stored bytes it shares with the version before it, the bytes it shares with any other version of the
definition, and the bytes no other version in the home holds (what deleting it would free, like
`imgtool du`'s unique bytes).

Disk manifests are immutable (a digest always means the same chunk list), so their chunk sets are
remembered across requests; the caller remembers the per-chunk user counts (imgtool/web/memo.py).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from imgtool.home import Home

MAX_REMEMBERED_DISKS = 4096  # each entry is a set of chunk digests: bound the memory a big home costs


@dataclass(frozen=True)
class Row:
    version: str
    stored_bytes: int
    shared_with_previous: int | None  # None for the first version
    shared_with_others: int
    only_here: int  # bytes no other version in the home holds

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "stored_bytes": self.stored_bytes,
                "shared_with_previous_bytes": self.shared_with_previous,
                "shared_with_others_bytes": self.shared_with_others, "unique_bytes": self.only_here}


class ChunkMemo:
    """Chunk sets of disk manifests (by the tuple of a version's disks), remembered between requests
    (thread-safe; a digest names immutable content)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sets: dict[tuple[str, ...], frozenset[str]] = {}

    def chunks(self, home: Home, disks: Iterable[str]) -> frozenset[str]:
        key = tuple(sorted(disks))
        with self._lock:
            known = self._sets.get(key)
        if known is not None:
            return known
        found: set[str] = set()
        for digest in key:
            found |= home.store.get_disk(digest).chunk_digests()
        chunks = frozenset(found)
        with self._lock:
            if len(self._sets) >= MAX_REMEMBERED_DISKS:
                self._sets.clear()
            self._sets[key] = chunks
        return chunks


def chunk_users(home: Home, memo: ChunkMemo, disk_lists: Iterable[Sequence[str]]) -> Counter[str]:
    """How many of these versions (each given as its disk digests) hold each chunk."""
    by_disks: Counter[tuple[str, ...]] = Counter(tuple(sorted(disks)) for disks in disk_lists)
    counts: Counter[str] = Counter()
    for disks, times in by_disks.items():
        for chunk in memo.chunks(home, disks):
            counts[chunk] += times
    return counts


def stored(home: Home, chunks: Iterable[str]) -> int:
    """Compressed bytes of these chunks as stored (0 for a chunk the index does not know)."""
    index = home.store.index
    total = 0
    for chunk in chunks:
        location = index.get(bytes.fromhex(chunk))
        total += location.clen if location else 0
    return total


def rows(home: Home, memo: ChunkMemo, versions: Sequence[tuple[str, Sequence[str]]], window: range, *,
         in_definition: Counter[str], users: Counter[str]) -> list[Row]:
    """Sharing for versions[window] of one definition, `versions` being (version, disk digests) lowest first;
    in_definition and users are chunk_users of the definition's versions and of the whole home's.
    "Others" means every other version of the definition; "only here" is across the whole home."""
    sets = {i: memo.chunks(home, versions[i][1]) for i in range(max(0, window.start - 1), window.stop)}
    found = []
    for i in window:
        mine = sets[i]
        previous = stored(home, mine & sets[i - 1]) if i > 0 else None
        others = stored(home, (c for c in mine if in_definition[c] > 1))
        only = stored(home, (c for c in mine if users[c] <= 1))
        found.append(Row(versions[i][0], stored(home, mine), previous, others, only))
    return found
