"""A derived, rebuildable index of one definition's versions, for fast list and resolve.

Reading 10,000 version records (one file each, hashed and parsed) takes seconds;
`latest` and `version list` need only a few fields of each. This cache keeps
those fields per version record digest in `<home>/cache/versions/G/D.json`.

Why it cannot go stale: records are immutable (a digest always means the same
fields), so only the name -> digest mapping can change. Every name change
renames or unlinks a file in the definition's names folder, which changes that
folder's mtime, and appends to the store's name log; the cache is used only when
both are exactly as they were when it was written. Otherwise it is rebuilt from
the names, reusing the summaries of digests it already knows. Losing or
damaging the cache costs time, never correctness.

Racy mtimes (as in git's index): file systems stamp mtimes with a coarse clock,
so two changes within one tick can leave the same mtime. A cache is therefore
written only when the folder's mtime is older than RACY_NS; a change after that
always gets a later stamp.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.names import DefinitionRef
from store import atomic, fsclock

FORMAT = 2  # 2: summaries carry the boot check state and revocation
RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class Summary:
    version: str
    record: str
    os_state: str
    published: str
    exclude_from_latest: bool
    end_of_life: str | None
    disks: list[dict[str, Any]]  # lun, digest, virtual_size
    check: str | None = None  # boot check state (pending, passed, failed, promoted); None: not required
    revoked: str | None = None  # the revocation's reason

    @classmethod
    def of(cls, v: ImageVersion, record: str) -> Summary:
        disks = [{"lun": d.lun, "digest": d.digest, "virtual_size": d.virtual_size} for d in v.disks]
        return cls(v.version, record, v.os_state, v.published, v.exclude_from_latest, v.end_of_life, disks,
                   v.check_state, v.revocation.reason if v.revocation else None)

    def to_json(self) -> dict[str, Any]:
        # What asdict gives (fields in order, the disks copied), without its deep copy of every value:
        # asdict was most of `version list --json`'s time at 10,000 versions.
        return {**vars(self), "disks": [dict(d) for d in self.disks]}


def _cache_path(home: Home, ref: DefinitionRef) -> Path:
    return home.cache / "versions" / ref.gallery / f"{ref.definition}.json"


def _key(home: Home, ref: DefinitionRef) -> dict[str, int]:
    layout = home.store.layout
    folder = layout.name(VERSIONS, ref.gallery, ref.definition)
    log = layout.log / "names.log"
    try:
        mtime = folder.stat().st_mtime_ns
    except FileNotFoundError:
        mtime = 0
    try:
        log_size = log.stat().st_size
    except FileNotFoundError:
        log_size = 0
    return {"folder_mtime_ns": mtime, "log_size": log_size}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        cached: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return cached if cached.get("format") == FORMAT else None


def summaries(home: Home, ref: DefinitionRef) -> list[Summary]:
    """Every version of a definition (unsorted), from the cache when it is provably current."""
    path = _cache_path(home, ref)
    key = _key(home, ref)
    cached = _load(path)
    if cached is not None and cached.get("key") == key:
        return [Summary(**item) for item in cached["versions"]]
    known = {item["record"]: item for item in (cached or {}).get("versions", [])}
    found = []
    for (version,), record in home.store.list_names(VERSIONS, ref.gallery, ref.definition):
        item = known.get(record)
        if item is None or item["version"] != version:
            found.append(Summary.of(ImageVersion.from_json(home.store.get_manifest(record)), record))
        else:
            found.append(Summary(**item))
    if fsclock.now_ns(home.store.layout.tmp) - key["folder_mtime_ns"] < RACY_NS:
        return found  # too fresh to trust its mtime: rebuild next time
    with contextlib.suppress(Exception):  # a cache that cannot be written only costs time
        body = {"format": FORMAT, "key": key, "versions": [s.to_json() for s in found]}
        atomic.replace(path, json.dumps(body, separators=(",", ":")).encode())
    return found
