"""What a set of roots reaches: the mark phase shared by gc and verify.

A manifest reaches the manifests in its "links" list; a disk manifest reaches
its chunks. Missing or unreadable manifests are recorded, not raised, so gc
and verify can report every problem in one pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from store import digest
from store.disks import KIND as DISK_KIND
from store.disks import DiskManifest
from store.errors import Corrupt, NotFound
from store.repo import Store


@dataclass
class Reach:
    manifests: set[str] = field(default_factory=set)  # hex digests
    chunks: set[str] = field(default_factory=set)  # hex digests
    broken: dict[str, str] = field(default_factory=dict)  # manifest hex -> what is wrong
    # which chunks each disk manifest uses (to say what a damaged chunk affects)
    disk_chunks: dict[str, set[str]] = field(default_factory=dict)
    # manifest hex -> the manifests it links to
    links: dict[str, list[str]] = field(default_factory=dict)


def links_of(obj: dict[str, object]) -> list[str]:
    value = obj.get("links", [])
    if not isinstance(value, list):
        raise Corrupt("manifest has a malformed links list", hint="a verify of the store shows what it affects")
    return [digest.parse(str(item)) for item in value]


def mark(store: Store, roots: Iterable[str]) -> Reach:
    reach = Reach()
    pending = [digest.parse(r) for r in roots]
    while pending:
        hex_digest = pending.pop()
        if hex_digest in reach.manifests:
            continue
        reach.manifests.add(hex_digest)
        try:
            obj = store.get_manifest(hex_digest)
            if obj.get("kind") == DISK_KIND:
                used = DiskManifest.from_json(obj).chunk_digests()
                reach.disk_chunks[hex_digest] = used
                reach.chunks.update(used)
            children = links_of(obj)
        except (NotFound, Corrupt) as exc:
            reach.broken[hex_digest] = exc.message
            continue
        reach.links[hex_digest] = children
        pending.extend(children)
    return reach


def closure(reach: Reach, root: str) -> set[str]:
    """Every manifest hex reachable from `root` (using a finished mark)."""
    seen: set[str] = set()
    pending = [digest.parse(root)]
    while pending:
        hex_digest = pending.pop()
        if hex_digest not in seen:
            seen.add(hex_digest)
            pending.extend(reach.links.get(hex_digest, []))
    return seen
