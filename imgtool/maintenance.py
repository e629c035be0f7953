"""Store-wide maintenance with the domain's roots: verify, repair, optimize, du (gc is imgtool/garbage.py).

verify maps damage back to the versions and VMs it hits; du says what each version costs and what
else the home holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool import garbage
from imgtool.capture.disk import CAPTURES
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.names import ref_fields
from imgtool.vm import bases, warm_state
from imgtool.vm import record as vmrecord
from store import gc as store_gc
from store import optimize as store_optimize
from store.packs import rebuild_index
from store.progress import Progress
from store.reach import Reach, closure, mark
from store.verify import Report
from store.verify import verify as store_verify


@dataclass
class OptimizeResult:
    dry_run: bool
    plan: dict[str, int | None]
    done: dict[str, int] = field(default_factory=dict)
    gc: garbage.GcPlan | None = None

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "plan": self.plan, "done": self.done or None,
                "gc": self.gc.to_json(dry_run=self.dry_run) if self.gc else None}


def optimize(home: Home, *, dry_run: bool, with_gc: bool = False, min_age: float = 0.0,
             progress: Progress | None = None, timeout: float = 60.0) -> OptimizeResult:
    """Rewrite cold packs with the strong encoding (after a gc, with `with_gc`), under the exclusive lock.

    A dry run only plans, and estimates the bytes after from a sample of the packs.
    """
    store = home.store
    with store.exclusive(timeout=timeout):
        collected = garbage.gc(home, dry_run=dry_run, timeout=timeout) if with_gc else None
        the_plan = store_optimize.plan(store, min_age=min_age, estimate=dry_run)
        result = OptimizeResult(dry_run, the_plan.summary(), gc=collected)
        if not dry_run:
            result.done = store_optimize.execute(store, the_plan, progress=progress).summary()
    return result


def repair_indexes(home: Home) -> list[str]:
    """Rebuild every damaged pack index from its pack (under the exclusive lock); returns the packs."""
    store = home.store
    with store.exclusive():
        damaged = store.reload_index().damaged
        rebuilt = []
        for path in damaged:
            rebuild_index(store.layout, path.stem)
            rebuilt.append(path.stem)
        store.reload_index()
    return rebuilt


def set_aside_damaged(home: Home, report: Report) -> list[str]:
    """Set aside the chunks a deep verify found damaged (see store.gc.set_aside), under the exclusive lock,
    so that capturing the same bytes again restores them; returns the chunks set aside."""
    damaged = {bytes.fromhex(p.object) for p in report.problems if p.kind == "chunk"}
    if not damaged:
        return []
    with home.store.exclusive():
        return store_gc.set_aside(home.store, damaged)


def verify(home: Home, *, deep: bool) -> tuple[Report, dict[str, list[str]]]:
    """Verify the store (and bases when deep); return the report and what it hits, by kind."""
    report = store_verify(home.store, deep=deep, extra_roots=vmrecord.roots(home))
    hit: dict[str, list[str]] = {"versions": [], "vms": [], "other": []}
    for label in report.affected:
        parts = label.split("/")
        if parts[0] == VERSIONS and len(parts) == 4:
            hit["versions"].append(f"{parts[1]}/{parts[2]}@{parts[3]}")
        elif parts[0] == "vm":
            hit["vms"].append(parts[1])
        else:
            hit["other"].append(label)
    if deep:
        for problem in bases.verify_all(home):
            report.problems.append(problem)
            hit["vms"].extend(bases.vms_on(home, problem.object))
    hit["vms"] = sorted(set(hit["vms"]))
    return report, hit


def du(home: Home) -> dict[str, Any]:
    """What the home holds: per version (in version order) its logical size, data, stored and unique
    bytes; unpublished captures; VM bases; VM folders; and the totals on disk."""
    store = home.store
    versions = sorted(((key, ImageVersion.from_json(store.get_manifest(d)), d)
                       for key, d in store.list_names(VERSIONS)),
                      key=lambda row: (row[0][0], row[0][1], _version_key(row[0][2])))
    captures = [d for _key, d in store.list_names(CAPTURES)]
    index = store.index
    # One mark over all roots: each manifest is read once, however many versions share it.
    reach = mark(store, [d for _k, _v, d in versions] + captures)
    chunk_sets = {d: _chunks(reach, d) for d in [d for _k, _v, d in versions] + captures}
    users: dict[str, int] = {}  # how many versions hold each chunk (captures do not make a chunk shared)
    for _k, _v, digest in versions:
        for chunk in chunk_sets[digest]:
            users[chunk] = users.get(chunk, 0) + 1

    def clen(chunk: str) -> int:
        location = index.get(bytes.fromhex(chunk))
        return location.clen if location else 0

    def rawlen(chunk: str) -> int:
        location = index.get(bytes.fromhex(chunk))
        return location.rawlen if location else 0

    rows = []
    for key, version, digest in versions:
        chunks = chunk_sets[digest]
        rows.append({
            **ref_fields(f"{key[0]}/{key[1]}@{key[2]}"),
            "disks": len(version.disks),
            "logical_bytes": sum(d.virtual_size for d in version.disks),
            "data_bytes": sum(rawlen(c) for c in chunks),
            "stored_bytes": sum(clen(c) for c in chunks),
            "unique_bytes": sum(clen(c) for c in chunks if users[c] == 1),
        })
    unpublished = set().union(*(chunk_sets[d] for d in captures)) - set().union(
        *(chunk_sets[d] for _k, _v, d in versions))
    store_bytes = _tree_bytes(store.layout.root)
    base_bytes = sum(bases.size_on_disk(b) for b in bases.all_bases(home))
    vm_rows = [{"name": f.name, "bytes": _tree_bytes(f)} for f in sorted(home.vms.iterdir())
               if f.is_dir() and not f.name.startswith(".")] if home.vms.is_dir() else []
    return {"versions": rows,
            "captures": {"count": len(captures), "unpublished_bytes": sum(clen(c) for c in unpublished)},
            "bases": {"count": len(bases.all_bases(home)), "bytes": base_bytes},
            "warm": _warm_usage(home),
            "vms": vm_rows, "store_bytes": store_bytes,
            "home_bytes": _tree_bytes(home.root)}


def _warm_usage(home: Home) -> dict[str, int]:
    """Warm states (imgtool version warm): how many folders and their bytes on disk, half-made ones included."""
    top = warm_state.root(home)
    folders = [f for v in top.iterdir() if v.is_dir() for f in v.iterdir() if f.is_dir()] if top.is_dir() else []
    return {"count": sum(1 for f in folders if (f / warm_state.RECORD).is_file()), "bytes": _tree_bytes(top)}


def _version_key(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (1 << 32,)


def _chunks(reach: Reach, digest: str) -> set[str]:
    return set().union(*(reach.disk_chunks.get(m, set()) for m in closure(reach, digest)))


def _tree_bytes(root: Path) -> int:
    """Bytes allocated on disk under `root` (sparse files count what they really use)."""
    total = 0
    for path in root.rglob("*") if root.is_dir() else []:
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # removed while we walked
        if not path.is_symlink() and path.is_file():
            total += info.st_blocks * 512
    return total
