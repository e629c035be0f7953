"""Garbage collection at the domain level: one plan, item by item, then its execution.

The plan lists everything gc would remove, each with the reason it goes and the bytes it frees:
expired capture leases, unused VM bases and half-written ones, unfinished VM folders, and the store's
own plan (unreferenced manifests, dead packs, packs to repack, packs without an index, leftovers).
It also lists what gc keeps although nothing published needs it, with the reason and the command
that would free it (capture leases, bases VMs stand on, versions pinned only by VMs). `--dry-run`
prints the plan; execution takes the same plan, under the same exclusive store lock, so what it
marked live still is. Roots: every name, minus expired capture leases, plus what VMs pin.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool import clock
from imgtool.capture.disk import CAPTURES
from imgtool.errors import ImgtoolError
from imgtool.flows.signing import SIGNATURES
from imgtool.gallery import recycle
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.vm import bases, boot_profile, warm_state
from imgtool.vm import lifecycle as vm
from imgtool.vm import record as vmrecord
from store import fsclock
from store import gc as store_gc

DEFAULT_CAPTURE_RETENTION = 24 * 3600  # seconds an unpublished capture is kept
STORE_REASONS = {
    "manifest": "no name, VM or capture reaches it",
    "pack": "none of its chunks is used",
    "repack": "some of its chunks are unused: the live ones move to a new pack, the old one is deleted",
    "orphan-pack": "a pack without an index (a write interrupted before its index)",
    "leftover": "a temporary file of an unfinished write",
}


@dataclass(frozen=True)
class Item:
    """Something the plan removes."""

    kind: str
    name: str
    reason: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "reason": self.reason, "bytes": self.bytes}


@dataclass(frozen=True)
class Kept:
    """Something gc keeps although nothing published needs it, and how to let it go."""

    kind: str
    name: str
    reason: str
    hint: str
    bytes: int | None = None
    until: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "reason": self.reason, "hint": self.hint,
                "bytes": self.bytes, "until": self.until}


@dataclass
class GcPlan:
    store: store_gc.Plan
    items: list[Item] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    expired_captures: list[str] = field(default_factory=list)
    evict: list[Path] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)
    unfinished: list[Path] = field(default_factory=list)
    purged: list[recycle.DeletedItem] = field(default_factory=list)
    warm: list[tuple[Path, str]] = field(default_factory=list)  # warm-state folders, with the reason
    per_version: list[tuple[str, ...]] = field(default_factory=list)  # boot profiles, signature sets of gone versions

    @property
    def bytes_freed(self) -> int:
        return sum(item.bytes for item in self.items)

    def to_json(self, *, dry_run: bool) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.kind] = counts.get(item.kind, 0) + 1
        return {"dry_run": dry_run, "bytes_freed": self.bytes_freed, "counts": counts,
                "live_chunks": self.store.live_chunks, "dead_chunks": self.store.dead_chunks,
                "items": [i.to_json() for i in self.items], "kept": [k.to_json() for k in self.kept]}


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _published_disks(home: Home) -> set[str]:
    """Disk digests some version names (their leases keep nothing that is not kept anyway)."""
    found: set[str] = set()
    for _key, record in home.store.list_names(VERSIONS):
        with contextlib.suppress(ImgtoolError):  # a damaged record: verify reports it, gc keeps what it links
            found.update(d.digest for d in ImageVersion.from_json(home.store.get_manifest(record)).disks)
    return found


def _captures(home: Home, retention: float, now: float) -> tuple[list[str], list[Kept]]:
    expired: list[str] = []
    kept: list[Kept] = []
    published = _published_disks(home)
    for key, digest in home.store.list_names(CAPTURES):
        try:
            made = home.store.layout.name(CAPTURES, *key).stat().st_mtime
        except FileNotFoundError:
            continue
        if now - made >= retention:
            expired.append(key[-1])
        elif digest not in published:
            kept.append(Kept("capture-lease", digest, "an unpublished capture, kept so it can still be published",
                             f"publish it (imgtool publish GALLERY/DEFINITION --version X.Y.Z --os-disk "
                             f"{digest}), or let it go now: imgtool gc --keep-captures 0",
                             until=_iso(made + retention)))
    return expired, kept


def _held_by_vms(home: Home) -> list[Kept]:
    """Versions whose names are gone but which VMs still pin, and bases VMs stand on."""
    named = {f"{g}/{d}@{v}" for (g, d, v), _digest in home.store.list_names(VERSIONS)}
    kept: list[Kept] = []
    for record in vmrecord.load_records(home):
        if record.image not in named:
            kept.append(Kept("version", record.image, f"deleted, but VM '{record.name}' was made from it",
                             f"imgtool vm delete {record.name}"))
        for digest in record.base_disks:
            base = home.bases / f"{digest.split(':', 1)[-1]}{bases.SUFFIX}"
            if base.exists():
                kept.append(Kept("base", base.name, f"VM '{record.name}' stands on it",
                                 f"imgtool vm delete {record.name}", bytes=bases.size_on_disk(base)))
    return kept


def _store_items(the_plan: store_gc.Plan) -> list[Item]:
    items = [Item("manifest", p.name, STORE_REASONS["manifest"], the_plan.freed.get(p, 0)) for p in the_plan.manifests]
    items += [Item("pack", p.stem, STORE_REASONS["pack"], the_plan.freed.get(p, 0)) for p in the_plan.packs]
    items += [Item("repack", p.stem, STORE_REASONS["repack"], the_plan.freed.get(p, 0)) for p in the_plan.repack]
    items += [Item("orphan-pack", p.stem, STORE_REASONS["orphan-pack"], the_plan.freed.get(p, 0))
              for p in the_plan.orphans]
    items += [Item("leftover", p.name, STORE_REASONS["leftover"], the_plan.freed.get(p, 0)) for p in the_plan.leftovers]
    return items


def _deletions(home: Home, now: float) -> tuple[list[recycle.DeletedItem], list[Kept]]:
    """Soft-deleted galleries, definitions and versions: past their retention, or kept until it ends."""
    when = dt.datetime.fromtimestamp(now, dt.UTC)
    kept = [Kept(f"deleted-{i.kind}", i.label, f"deleted at {i.deleted_at}, kept for the retention period",
                 f"imgtool {i.kind} restore {i.label} brings it back; imgtool {i.kind} delete --purge frees it now",
                 until=i.purge_after) for i in recycle.kept(home, when)]
    return recycle.expired(home, when), kept


def plan(home: Home, *, capture_retention: float = DEFAULT_CAPTURE_RETENTION, now: float | None = None) -> GcPlan:
    """What gc would do now. The caller holds the store's exclusive lock (and executes under it)."""
    store = home.store
    # Lease ages are mtimes, so they are measured by the file system's clock; deletions carry stamps
    # written by this clock. `now` (tests) stands for both.
    expired, kept = _captures(home, capture_retention, fsclock.now(store.layout.tmp) if now is None else now)
    purged, retained = _deletions(home, clock.now().timestamp() if now is None else now)
    gone = {(CAPTURES, h) for h in expired} | {(recycle.DELETED, *i.key) for i in purged}
    names = store.all_names()
    orphans = _orphaned_per_version(names, gone) + _leases_of_gone_vms(home, names)
    gone |= set(orphans)
    roots = [d for key, d in names if key not in gone and (key[0], key[-1]) not in gone]
    roots += vmrecord.roots(home).values()
    result = GcPlan(store_gc.plan(store, roots), kept=kept + retained + _held_by_vms(home), expired_captures=expired,
                    purged=purged)
    result.items = [Item("capture-lease", h, "an unpublished capture older than the retention", 0) for h in expired]
    result.items += [Item(f"deleted-{i.kind}", i.label, f"deleted at {i.deleted_at}; its retention ended "
                          f"{i.purge_after}", 0) for i in purged]
    result.per_version = orphans
    result.items += [Item(PER_VERSION_KINDS[k[0]], "/".join(k[1:]), _ORPHAN_REASONS[k[0]], 0) for k in orphans]
    result.items += _store_items(result.store)
    result.evict, result.stale, result.unfinished = bases.unused(home), bases.stale_temporaries(home), \
        vm.unfinished(home)
    result.items += [Item("base", b.name, "no VM stands on it (the next vm new rebuilds it)", bases.size_on_disk(b))
                     for b in result.evict]
    result.items += [Item("base-temporary", b.name, "a half-written base whose writer is gone", bases.size_on_disk(b))
                     for b in result.stale]
    result.warm = warm_state.collectable(home, _live_warm(home))
    result.items += [Item("warm-state", f"{p.parent.name[:12]}/{p.name}", why, _tree_size(p)) for p, why in result.warm]
    result.items += [Item("unfinished-vm", f.name, "a VM folder without a record (an interrupted vm new or delete)",
                          _tree_size(f)) for f in result.unfinished]
    return result


PER_VERSION_KINDS = {boot_profile.NAMESPACE: "boot-profile", SIGNATURES: "signature-set",
                     vmrecord.STREAM_LEASES: "stream-lease"}
PER_VERSION = (boot_profile.NAMESPACE, SIGNATURES)  # names that describe one version, keyed like it
_ORPHAN_REASONS = {boot_profile.NAMESPACE: "its version is gone (purged)", SIGNATURES: "its version is gone (purged)",
                   vmrecord.STREAM_LEASES: "its VM is gone (a vm delete killed before it dropped its leases)"}


def _leases_of_gone_vms(home: Home, names: list[tuple[tuple[str, ...], str]]) -> list[tuple[str, ...]]:
    """Stream leases (stream-leases/<vm>/<disk>) whose VM has no record. `vm delete` removes the record
    first and the leases last, so a delete killed in between (or a stream server renewing a lease just as
    its VM is deleted) would hold those chunks forever. A lease is only written by the VM's stream server,
    which runs only while the record exists; under gc's exclusive lock no lease is being written."""
    return [key for key, _d in names if key[0] == vmrecord.STREAM_LEASES and len(key) == 3
            and not vmrecord.record_path(home, key[1]).exists()]


def _orphaned_per_version(names: list[tuple[tuple[str, ...], str]],
                     gone: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Boot-profile and signature-set names whose version is neither named nor kept as deleted (a
    soft-deleted version can be restored, and these with it). Both are bound to their version's digest,
    so a version published again under the same number would refuse stale ones; gc drops them so no
    name outlives the version it describes."""
    held = {key[1:] for key, _d in names if key[0] == VERSIONS}
    # a deleted gallery or definition may be restored with its versions: keep what lies under it
    held |= {key[2:] for key, _d in names if key[0] == recycle.DELETED and key not in gone}
    return [key for key, _d in names if key[0] in PER_VERSION
            and not any(key[1:1 + n] in held for n in (1, 2, 3))]


def _live_warm(home: Home) -> set[str]:
    """Version digests (hex) with warm states that may stay: named and not revoked. Only the versions
    that have warm states are read, so a home with many versions pays nothing here."""
    top = warm_state.root(home)
    present = {p.name for p in top.iterdir()} if top.is_dir() else set()
    if not present:
        return set()
    named = {d.split(":", 1)[-1]: d for _key, d in home.store.list_names(VERSIONS)}
    return {h for h in present & set(named)
            if ImageVersion.from_json(home.store.get_manifest(named[h])).revocation is None}


def _tree_size(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def execute(home: Home, the_plan: GcPlan) -> None:
    """Carry out a plan made under the same exclusive lock."""
    for name in the_plan.expired_captures:
        home.store.delete_name(CAPTURES, name)
    for key in the_plan.per_version:
        home.store.delete_name(*key)
    recycle.purge(home, the_plan.purged)
    store_gc.execute(home.store, the_plan.store)
    for base in the_plan.evict:
        bases.evict(base)
    for leftover in the_plan.stale:
        leftover.unlink(missing_ok=True)
    for folder in the_plan.unfinished:
        shutil.rmtree(folder, ignore_errors=True)
    for folder, _why in the_plan.warm:
        shutil.rmtree(folder, ignore_errors=True)


def gc(home: Home, *, dry_run: bool, capture_retention: float = DEFAULT_CAPTURE_RETENTION,
       timeout: float = 60.0, now: float | None = None) -> GcPlan:
    """Plan (and unless dry_run, execute) garbage collection under the exclusive store lock."""
    with home.store.exclusive(timeout=timeout):
        the_plan = plan(home, capture_retention=capture_retention, now=now)
        if not dry_run:
            execute(home, the_plan)
    return the_plan
