"""Garbage collection: plan first, then execute the plan.

Roots are every name plus the extra roots the caller gives (VMs, leases).
Under the exclusive store lock no capture is in flight, so anything not
reached is garbage: unreferenced manifests, packs whose chunks are all dead,
packs without an index (a crash between pack and index), and `.tmp-*` leftovers.
Packs that hold some live chunks are repacked: live frames are copied (not
recompressed) into new packs, whose indexes are written before the old index
and pack are deleted, so a crash mid-gc loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from store import atomic, codec
from store.packs import Location, PackWriter, decode_index, iter_index_files, iter_pack_files, read_frame
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


def name_roots(store: Store) -> list[str]:
    """Every named manifest: the default roots."""
    return [value for _key, value in store.all_names()]


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
        alive = [e for e in entries if e[0] in live_raw]
        result.live_chunks += len(alive)
        result.dead_chunks += len(entries) - len(alive)
        dead_bytes = sum(e[2] for e in entries if e[0] not in live_raw)
        if not alive:
            result.packs.append(index_path)
            result.freed[index_path] = _size(index_path) + _size(store.layout.pack(pack_hex))
        elif dead_bytes:
            result.repack.append(index_path)
            result.freed[index_path] = dead_bytes
        result.bytes_freed += result.freed.get(index_path, 0)
    for pack_path in iter_pack_files(store.layout):
        if pack_path.stem not in indexed:
            result.orphans.append(pack_path)
            result.freed[pack_path] = _size(pack_path)
            result.bytes_freed += result.freed[pack_path]


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
        for raw, offset, clen, rawlen in entries:
            if raw in live_raw and not writer.has(raw):
                frame = read_frame(store.layout, Location(pack_hex, offset, clen, rawlen))
                # A damaged frame must not be copied into a pack that looks fresh: this raises
                # Corrupt and gc stops before deleting anything.
                codec.decompress(frame, rawlen, raw, what=raw.hex()[:16])
                writer.add(raw, frame, rawlen)
    writer.flush()
