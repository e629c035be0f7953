"""Boot profiles: the order in which a boot first touched a version's chunks, kept as a prefetch hint.

A boot check records one (imgtool/vm/profile_recording.py); a push attaches it to the version's manifest
as a referrer, a pull keeps it, and a streaming VM fetches its chunks first (imgtool/stream). A profile
is only a hint: it names chunk numbers of the version's own disk manifests, never bytes, so a hostile
one can waste bandwidth but never change what the guest reads. Every reader checks it strictly
(`parse`, then `check`) and ignores a bad one.

Document (canonical JSON, at most MAX_BYTES):
  {"kind": "boot-profile", "format": 1, "subject": "sha256:…" | null,
   "disks": [{"disk": "os" | "lunN", "digest": "blake3:…", "chunks": [n, …]}]}
`subject` binds the copy pushed to a registry to the version manifest it refers to (null in the local
store, where the name `boot-profiles/G/D/X.Y.Z` and the disk digests bind it); `digest` is the disk
manifest the chunk numbers index; `chunks` are distinct numbers of that manifest's non-zero chunks,
first touch first.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from imgtool import strict
from imgtool.errors import Corrupt
from imgtool.oci import media
from store import canonical
from store.repo import Store

MEDIA_TYPE = media.BOOT_PROFILE
KIND = "boot-profile"
FORMAT = 1
NAMESPACE = "boot-profiles"  # store names: boot-profiles/G/D/X.Y.Z
MAX_BYTES = 1 << 20  # a profile of every chunk of an 8 GiB disk at 128 KiB chunks is about 400 KiB
MAX_CHUNKS = 1 << 16  # entries over all disks
MAX_DISKS = 64
DISK_LABEL = re.compile(r"os|lun[0-9]{1,3}")
BLAKE3 = re.compile(r"blake3:[0-9a-f]{64}")

_FIELDS = {"kind", "format", "subject", "disks"}
_DISK_FIELDS = {"disk", "digest", "chunks"}


@dataclass(frozen=True)
class DiskOrder:
    disk: str  # the export name: "os" or "lunN"
    digest: str  # the disk manifest whose chunk numbers `chunks` are
    chunks: tuple[int, ...]  # first touch first


@dataclass(frozen=True)
class BootProfile:
    subject: str | None  # the version manifest (sha256) this copy is bound to; None in the local store
    disks: tuple[DiskOrder, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": KIND, "format": FORMAT, "subject": self.subject,
                "disks": [{"disk": d.disk, "digest": d.digest, "chunks": list(d.chunks)} for d in self.disks]}

    def encode(self) -> bytes:
        return canonical.dumps(self.to_json())

    def bound_to(self, subject: str | None) -> BootProfile:
        return BootProfile(subject, self.disks)

    @property
    def size(self) -> int:
        return sum(len(d.chunks) for d in self.disks)


def parse(data: bytes, *, what: str) -> BootProfile:
    """The profile in `data`, checked for shape and caps (not yet against a version: see `check`)."""
    obj = strict.load_object(data, what=what, limit=MAX_BYTES)
    strict.exact(obj, what=what, required=_FIELDS)
    strict.equal(obj, "kind", KIND, what=what)
    strict.equal(obj, "format", FORMAT, what=what)
    subject = obj["subject"]
    if subject is not None:
        subject = strict.text(obj, "subject", what=what, pattern=strict.SHA256)
    disks = obj["disks"]
    if not isinstance(disks, list) or len(disks) > MAX_DISKS:
        raise strict.refuse(what, f"disks is not a list of at most {MAX_DISKS}")
    found = tuple(_disk(entry, what=f"{what}, disk {n}") for n, entry in enumerate(disks))
    if len({d.disk for d in found}) != len(found):
        raise strict.refuse(what, "a disk is listed twice")
    if sum(len(d.chunks) for d in found) > MAX_CHUNKS:
        raise strict.refuse(what, f"more than {MAX_CHUNKS} chunks")
    return BootProfile(subject, found)


def _disk(entry: Any, *, what: str) -> DiskOrder:
    if not isinstance(entry, dict):
        raise strict.refuse(what, "not an object")
    strict.exact(entry, what=what, required=_DISK_FIELDS)
    label = strict.text(entry, "disk", what=what, pattern=DISK_LABEL)
    disk_digest = strict.text(entry, "digest", what=what, pattern=BLAKE3)
    chunks = entry["chunks"]
    if not isinstance(chunks, list) or len(chunks) > MAX_CHUNKS or \
            not all(type(n) is int and 0 <= n < 2**53 for n in chunks):
        raise strict.refuse(what, "chunks is not a list of chunk numbers")
    if len(set(chunks)) != len(chunks):
        raise strict.refuse(what, "a chunk is listed twice")
    return DiskOrder(label, disk_digest, tuple(chunks))


def disk_label(lun: int | None) -> str:
    """A disk's label in a profile, as its NBD export is named: "os", or "lunN"."""
    return "os" if lun is None else f"lun{lun}"


DiskChunks = Mapping[str, tuple[str, frozenset[int]]]  # label -> (disk manifest digest, its non-zero chunks)


def check(profile: BootProfile, *, subject: str | None, disks: DiskChunks, what: str) -> None:
    """Refuse (Corrupt) a profile that is not about exactly this version: another subject, a disk it does
    not have or of another digest, or a chunk number that is not one of that disk's non-zero chunks."""
    if profile.subject != subject:
        raise Corrupt(f"{what} is bound to {str(profile.subject)[:19]}…, not to {str(subject)[:19]}…",
                      hint="it was made for another version; it is ignored")
    for order in profile.disks:
        known = disks.get(order.disk)
        if known is None or known[0] != order.digest:
            raise Corrupt(f"{what} names disk {order.disk} ({order.digest[:19]}…), which the version does not have",
                          hint="it was made for another version; it is ignored")
        stray = next((n for n in order.chunks if n not in known[1]), None)
        if stray is not None:
            raise Corrupt(f"{what} names chunk {stray} of disk {order.disk}, which is not a chunk of that disk",
                          hint="it was made for another version; it is ignored")


# -- the local store ------------------------------------------------------------------------------------------------

def save(store: Store, gallery: str, definition: str, version: str, profile: BootProfile) -> None:
    """Keep `profile` (unbound) as the version's, replacing an older one."""
    obj = canonical.loads(profile.bound_to(None).encode(), what="a boot profile")
    store.set_name(NAMESPACE, gallery, definition, version, target=store.put_manifest(obj))


def load(store: Store, gallery: str, definition: str, version: str) -> BootProfile | None:
    """The version's profile, checked for shape (Corrupt if damaged); None if it has none."""
    named = store.get_name(NAMESPACE, gallery, definition, version)
    if named is None:
        return None
    what = f"the boot profile of {gallery}/{definition}@{version}"
    return parse(canonical.dumps(store.get_manifest(named)), what=what)


def forget(store: Store, gallery: str, definition: str, version: str) -> None:
    store.delete_name(NAMESPACE, gallery, definition, version)
