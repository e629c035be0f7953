"""Garbage collection: plan first, then execute the plan.

Roots are the names and extra roots the caller gives (VMs, leases). Under the
exclusive store lock no capture is in flight, so anything not reached is
garbage. What is deleted, and in which order, is specified in
docs/STORE-FORMAT.md ("Garbage collection"): a crash mid-gc loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from store import atomic, codec
from store.errors import Corrupt
from store.packs import (
    Entry,
    Location,
    PackWriter,
    decode_chunk,
    decode_frame,
    decode_index,
    frames,
    iter_index_files,
    iter_pack_files,
    read_frame,
)
from store.reach import mark
from store.repo import Store


@dataclass
class Plan:
    manifests: list[Path] = field(default_factory=list)
    packs: list[Path] = field(default_factory=list)  # packs to delete whole (with their index)
    repack: list[Path] = field(default_factory=list)  # indexes of packs to rewrite
    orphans: list[Path] = field(default_factory=list)  # packs without an index
    leftovers: list[Path] = field(default_factory=list)  # temporary files and scratch dirs
    bytes_freed: int = 0
    freed: dict[Path, int] = field(default_factory=dict)  # what each listed path frees (its pack, for indexes)
    live_chunks: int = 0
    dead_chunks: int = 0
    kept_manifests: int = 0
    live: set[bytes] = field(default_factory=set)  # raw digests of the chunks the roots reach

    def summary(self) -> dict[str, int]:
        return {
            "manifests_deleted": len(self.manifests),
            "packs_deleted": len(self.packs) + len(self.orphans),
            "packs_repacked": len(self.repack),
            "leftovers_deleted": len(self.leftovers),
            "live_chunks": self.live_chunks,
            "dead_chunks": self.dead_chunks,
            "kept_manifests": self.kept_manifests,
            "bytes_freed": self.bytes_freed,
        }


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


def plan(store: Store, roots: Iterable[str]) -> Plan:
    """Compute what gc would delete if only `roots` (and what they reach) stay.

    The caller holds the exclusive lock and executes the plan under it.
    """
    reach = mark(store, roots)
    result = Plan(kept_manifests=len(reach.manifests), live={bytes.fromhex(h) for h in reach.chunks})
    _plan_manifests(store, reach.manifests, result)
    _plan_packs(store, result.live, result)
    result.leftovers = _leftovers(store)
    for path in result.leftovers:
        result.freed[path] = _size(path)
        result.bytes_freed += result.freed[path]
    return result


def _plan_manifests(store: Store, live: set[str], result: Plan) -> None:
    if not store.layout.manifests.exists():
        return
    for path in sorted(store.layout.manifests.glob("*/*")):
        if path.name.startswith(atomic.TMP_PREFIX):
            continue
        if path.name not in live:
            result.manifests.append(path)
            result.freed[path] = _size(path)
            result.bytes_freed += result.freed[path]


def _plan_packs(store: Store, live_raw: set[bytes], result: Plan) -> None:
    indexed: set[str] = set()
    for index_path in iter_index_files(store.layout):
        pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        indexed.add(pack_hex)
        alive = [e for e in entries if e.raw in live_raw]
        result.live_chunks += len(alive)
        result.dead_chunks += len(entries) - len(alive)
        if not alive:
            result.packs.append(index_path)
            result.freed[index_path] = _size(index_path) + _size(store.layout.pack(pack_hex))
        elif len(alive) < len(entries):
            result.repack.append(index_path)
            result.freed[index_path] = sum(_dead_share(m, live_raw) for m in frames(entries))
        result.bytes_freed += result.freed.get(index_path, 0)
    for pack_path in iter_pack_files(store.layout):
        if pack_path.stem not in indexed:
            result.orphans.append(pack_path)
            result.freed[pack_path] = _size(pack_path)
            result.bytes_freed += result.freed[pack_path]


def _dead_share(members: list[Entry], live_raw: set[bytes]) -> int:
    """Bytes a frame's dead chunks take: all of a dead frame, a raw-length share of a partly dead span."""
    dead = sum(e.rawlen for e in members if e.raw not in live_raw)
    return members[0].clen * dead // max(1, sum(e.rawlen for e in members))


def _leftovers(store: Store) -> list[Path]:
    found = [p for p in store.layout.root.rglob(f"{atomic.TMP_PREFIX}*")
             if p.parent == store.layout.tmp or p.is_file()]
    return sorted(found)


def execute(store: Store, the_plan: Plan) -> None:
    """Carry out a plan made under the same exclusive lock (so what it marked live still is).

    Whatever needs no new space goes first (dead packs, orphans, manifests, leftovers), so gc
    frees space even on a full disk, where repacking (which writes new packs) may fail.
    """
    _delete_packs(the_plan.packs)
    for path in the_plan.orphans + the_plan.manifests:
        path.unlink(missing_ok=True)
    for path in the_plan.leftovers:
        atomic.remove_tree(path)
    _repack(store, the_plan.repack, the_plan.live)
    _delete_packs(the_plan.repack)
    store.reload_index()


def _delete_packs(indexes: list[Path]) -> None:
    for index_path in indexes:
        pack = index_path.with_suffix(".pack")
        index_path.unlink(missing_ok=True)  # index first: an index never names a missing pack
        pack.unlink(missing_ok=True)


def _repack(store: Store, indexes: list[Path], live_raw: set[bytes]) -> None:
    if not indexes:
        return
    old = {p.stem for p in indexes}
    # The new packs must not count chunks that live only in packs being rewritten.
    survivors = store.reload_index()
    for raw in [r for r, loc in survivors.locations.items() if loc.pack in old]:
        del survivors.locations[raw]
    writer = PackWriter(store.layout, survivors)
    for index_path in indexes:
        pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        for members in frames(entries):
            _copy_frame(store, writer, pack_hex, [e for e in members if e.raw in live_raw], len(members))
    writer.flush()


def _copy_frame(store: Store, writer: PackWriter, pack_hex: str, members: list[Entry], total: int) -> None:
    """Carry the live chunks of one frame (`total` chunks) that the store lacks elsewhere into the new packs.

    A frame is copied as it is (not recompressed), except a span with dead chunks, whose live ones
    are compressed again as a span of their own so the dead bytes go too.
    """
    wanted = [e for e in members if not writer.has(e.raw)]
    if not wanted:
        return
    frame = read_frame(store.layout, Location.of(pack_hex, wanted[0]))
    # A damaged frame must not be copied into a pack that looks fresh: this raises Corrupt and gc
    # stops before deleting anything.
    data = decode_frame(frame, wanted, what=wanted[0].raw.hex()[:16])
    pieces = [data[e.inner:e.inner + e.rawlen] for e in wanted]
    for entry, piece in zip(wanted, pieces, strict=True):
        codec.check(piece, entry.raw, what=entry.raw.hex()[:16])
    if wanted[0].encoding == codec.ZSTD:
        writer.add(wanted[0].raw, frame, wanted[0].rawlen)
    elif len(wanted) == total:
        writer.add_frame(frame, wanted)
    elif len(wanted) == 1:
        writer.add(wanted[0].raw, codec.compress(pieces[0], level=codec.STRONG_LEVEL), wanted[0].rawlen)
    else:  # in order, so only the span's last chunk can be short, as a span requires
        writer.add_span(codec.compress(b"".join(pieces), level=codec.STRONG_LEVEL),
                        [(e.raw, e.rawlen) for e in wanted])


def set_aside(store: Store, damaged: set[bytes]) -> list[str]:
    """Rewrite the packs that hold `damaged` chunks without those chunks; return the chunks set aside.

    The caller holds the exclusive lock. A chunk is set aside only if its stored copy really fails its
    check now (a chunk that reads back right stays). Afterwards the store lacks it, so what needs it
    fails with "missing chunk" instead of bad data, and the next capture of the same bytes stores it
    again: dedup would otherwise keep the damaged copy for ever. Healthy neighbours are copied as gc's
    repack copies them (new packs and indexes before the old ones go).
    """
    index = store.reload_index()
    bad = {raw for raw in damaged if (location := index.get(raw)) is not None and not _reads_back(store, location, raw)}
    if not bad:
        return []
    holding: list[Path] = []
    keep: set[bytes] = set()
    for index_path in iter_index_files(store.layout):
        _pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        if any(e.raw in bad for e in entries):
            holding.append(index_path)
            keep |= {e.raw for e in entries if e.raw not in bad}
    _repack(store, holding, keep)
    _delete_packs(holding)
    store.reload_index()
    return sorted(raw.hex() for raw in bad)


def _reads_back(store: Store, location: Location, raw: bytes) -> bool:
    try:
        decode_chunk(read_frame(store.layout, location), location, raw)
    except Corrupt:
        return False
    return True
