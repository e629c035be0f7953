"""Check a store: every name resolves to complete content; `deep` re-hashes data.

The report says exactly what is damaged (chunk, pack, manifest, index) and
which names stand on it, so the caller can say which versions and VMs are hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from store import codec
from store.errors import Corrupt
from store.packs import (
    ChunkIndex,
    Entry,
    Location,
    decode_frame,
    decode_index,
    frames,
    iter_index_files,
    iter_pack_files,
    read_frame,
)
from store.reach import Reach, closure, mark
from store.repo import Store


@dataclass
class Problem:
    kind: str  # "manifest", "chunk", "index", "pack", "name"
    object: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "object": self.object, "message": self.message}


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    # Unreachable leftovers of an interrupted write (a pack whose index was never written): not
    # damage, nothing stands on them, and gc removes them.
    garbage: list[Problem] = field(default_factory=list)
    affected: dict[str, list[str]] = field(default_factory=dict)  # root label -> what it lost
    names: int = 0
    manifests: int = 0
    chunks: int = 0
    chunks_hashed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: Store, *, deep: bool = False, extra_roots: dict[str, str] | None = None) -> Report:
    """Check every name (and extra labelled roots). Never raises for damage: reports it.

    Holds the store lock shared, so no gc deletes an index or pack between listing and reading it.
    """
    with store.reading():
        return _verify(store, deep=deep, extra_roots=extra_roots)


def _verify(store: Store, *, deep: bool, extra_roots: dict[str, str] | None) -> Report:
    report = Report()
    roots = {"/".join(key): value for key, value in store.all_names()}
    roots.update(extra_roots or {})
    report.names = len(roots)
    index = ChunkIndex()
    bad_chunks = _check_indexes(store, report, index, deep=deep)
    reach = mark(store, roots.values())
    report.manifests = len(reach.manifests)
    report.chunks = len(reach.chunks)
    for hex_digest, message in sorted(reach.broken.items()):
        report.problems.append(Problem("manifest", hex_digest, message))
    # Chunks are looked up in the indexes that read back intact: a damaged index is reported
    # above, and the chunks only it listed are attributed to what uses them, not a crash here.
    missing = "in no intact pack index" if any(p.kind == "index" for p in report.problems) \
        else "missing from every pack"
    for hex_digest in sorted(reach.chunks):
        if bytes.fromhex(hex_digest) not in index:
            bad_chunks[hex_digest] = missing
            report.problems.append(Problem("chunk", hex_digest, missing))
    _attribute(reach, roots, bad_chunks, report)
    return report


def _check_indexes(store: Store, report: Report, index: ChunkIndex, *, deep: bool) -> dict[str, str]:
    """Check every pack index (and with `deep` every chunk); fill `index` from the intact ones."""
    bad: dict[str, str] = {}
    indexed: set[str] = set()
    for index_path in iter_index_files(store.layout):
        try:
            pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        except Corrupt as exc:
            report.problems.append(Problem("index", index_path.name, exc.message))
            continue
        indexed.add(pack_hex)
        index.add(pack_hex, entries)
        if not store.layout.pack(pack_hex).exists():
            report.problems.append(Problem("pack", pack_hex, "index names a pack that is missing"))
            bad.update({e.raw.hex(): "its pack is missing" for e in entries})
            continue
        if deep:
            _hash_pack(store, pack_hex, entries, report, bad)
    for pack_path in iter_pack_files(store.layout):
        if pack_path.stem not in indexed and not pack_path.with_suffix(".idx").exists():
            # Written by a capture that was interrupted before its index: invisible, not damage.
            report.garbage.append(Problem("pack", pack_path.stem, "pack without an index (gc removes it)"))
    return bad


def _hash_pack(store: Store, pack_hex: str, entries: list[Entry], report: Report, bad: dict[str, str]) -> None:
    for members in frames(entries):
        first = members[0]
        report.chunks_hashed += len(members)
        try:
            frame = read_frame(store.layout, Location.of(pack_hex, first))
            data = decode_frame(frame, members, what=first.raw.hex()[:16])
        except Corrupt as exc:
            for entry in members:
                _damaged(report, bad, pack_hex, entry, exc.message)
            continue
        for entry in members:
            try:
                codec.check(data[entry.inner:entry.inner + entry.rawlen], entry.raw, what=entry.raw.hex()[:16])
            except Corrupt as exc:
                _damaged(report, bad, pack_hex, entry, exc.message)


def _damaged(report: Report, bad: dict[str, str], pack_hex: str, entry: Entry, message: str) -> None:
    bad[entry.raw.hex()] = message
    report.problems.append(Problem("chunk", entry.raw.hex(), f"in pack {pack_hex[:16]}: {message}"))


def _attribute(reach: Reach, roots: dict[str, str], bad_chunks: dict[str, str], report: Report) -> None:
    bad_disks = {d for d, used in reach.disk_chunks.items() if used & bad_chunks.keys()}
    damaged = bad_disks | set(reach.broken)
    for label, root in sorted(roots.items()):
        lost = sorted(closure(reach, root) & damaged)
        if lost:
            report.affected[label] = lost
