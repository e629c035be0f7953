"""Store-wide maintenance with the domain's roots: gc, verify, du.

gc roots are every name (galleries, definitions, versions, unexpired capture
leases) plus the versions VMs stand on; verify maps damage back to the
versions and VMs it hits; du says what each version costs.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from imgtool.capture.disk import CAPTURES
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.vm import bases
from imgtool.vm import lifecycle as vm
from imgtool.vm import record as vmrecord
from store import gc as store_gc
from store.packs import rebuild_index
from store.reach import closure, mark
from store.verify import Report
from store.verify import verify as store_verify

DEFAULT_CAPTURE_RETENTION = 24 * 3600  # seconds an unpublished capture is kept


@dataclass
class GcResult:
    dry_run: bool
    expired_captures: list[str] = field(default_factory=list)
    store: dict[str, int] = field(default_factory=dict)
    bases_evicted: list[str] = field(default_factory=list)
    bases_bytes: int = 0
    unfinished_vms: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "expired_captures": self.expired_captures, **self.store,
                "bases_evicted": self.bases_evicted, "bases_bytes_freed": self.bases_bytes,
                "unfinished_vms": self.unfinished_vms,
                "total_bytes_freed": self.store.get("bytes_freed", 0) + self.bases_bytes}


def _expired_captures(home: Home, retention: float) -> list[str]:
    now = time.time()
    expired = []
    for key, _digest in home.store.list_names(CAPTURES):
        path = home.store.layout.name(CAPTURES, *key)
        try:
            if now - path.stat().st_mtime >= retention:
                expired.append(key[-1])
        except FileNotFoundError:
            continue
    return expired


def gc(home: Home, *, dry_run: bool, capture_retention: float = DEFAULT_CAPTURE_RETENTION,
       timeout: float = 60.0) -> GcResult:
    """Plan (and unless dry_run, execute) garbage collection under the exclusive lock."""
    store = home.store
    result = GcResult(dry_run)
    with store.exclusive(timeout=timeout):
        result.expired_captures = _expired_captures(home, capture_retention)
        expired = set(result.expired_captures)
        roots = [d for key, d in store.all_names() if not (key[0] == CAPTURES and key[-1] in expired)]
        roots += vmrecord.roots(home).values()
        plan = store_gc.plan(store, roots)
        result.store = plan.summary()
        leftovers = vm.unfinished(home)
        result.unfinished_vms = [p.name for p in leftovers]
        evict = bases.unused(home)
        stale = bases.stale_temporaries(home)
        result.bases_evicted = [b.name for b in evict]
        result.bases_bytes = sum(bases.size_on_disk(b) for b in evict + stale)
        if not dry_run:
            for name in result.expired_captures:
                store.delete_name(CAPTURES, name)
            store_gc.execute(store, plan)
            for base in evict:
                bases.evict(base)
            for leftover in stale:
                leftover.unlink(missing_ok=True)
            for folder in leftovers:
                shutil.rmtree(folder, ignore_errors=True)
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


def du(home: Home) -> list[dict[str, Any]]:
    """Per version: logical size, data bytes, stored bytes, bytes only it holds."""
    store = home.store
    versions = [(key, ImageVersion.from_json(store.get_manifest(d)), d) for key, d in store.list_names(VERSIONS)]
    index = store.index
    # One mark over all versions: each manifest is read once, however many versions share it.
    reach = mark(store, [d for _k, _v, d in versions])
    chunk_sets: dict[str, set[str]] = {}
    for _key, _version, digest in versions:
        reached = closure(reach, digest)
        chunk_sets[digest] = set().union(*(reach.disk_chunks.get(m, set()) for m in reached))
    users: dict[str, int] = {}
    for chunks in chunk_sets.values():
        for chunk in chunks:
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
            "version": f"{key[0]}/{key[1]}@{key[2]}",
            "disks": len(version.disks),
            "logical_bytes": sum(d.virtual_size for d in version.disks),
            "data_bytes": sum(rawlen(c) for c in chunks),
            "stored_bytes": sum(clen(c) for c in chunks),
            "unique_bytes": sum(clen(c) for c in chunks if users[c] == 1),
        })
    return rows
