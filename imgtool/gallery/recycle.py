"""Soft delete: deleted galleries, definitions and versions are kept for a retention period, then purged.

Deleting moves a name from its namespace (`versions/G/D/V`, `definitions/G/D`, `galleries/G`) to
`deleted/<namespace>/<key>`, which names a `DeletedRecord` linking the hidden record. Names are gc
roots, so the hidden record and everything it reaches (disks, chunks) stay until the deleted name is
purged; restore puts the very same record digest back under its old name, so it comes back exactly.

Write order (crash safety): delete writes the deleted record, then names it, then removes the live
name; restore creates the live name, then removes the deleted one. A crash in between leaves both
names, which is harmless: the data is kept, and repeating the command finishes it.

Locks: delete and restore hold the gallery lock (and through it the store's shared lock). `purge` takes
no lock: its caller holds either the store's exclusive lock (gc) or the gallery lock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from imgtool import clock
from imgtool.clock import stamp
from imgtool.errors import AlreadyExists, NotFound, Refused
from imgtool.gallery.galleries import DEFINITIONS, GALLERIES, VERSIONS
from imgtool.gallery.lifecycle_model import DeletedRecord, parse_time
from imgtool.home import Home

DELETED = "deleted"
DEFAULT_RETENTION = dt.timedelta(days=7)
_KINDS = {VERSIONS: "version", DEFINITIONS: "definition", GALLERIES: "gallery"}


@dataclass(frozen=True)
class DeletedItem:
    """One kept deletion. `key` is the live name (namespace first); `name_target` what the deleted name holds."""

    key: tuple[str, ...]
    kind: str
    label: str
    digest: str  # the hidden gallery/definition/version record
    deleted_at: str
    purge_after: str
    name_target: str
    bytes: int | None = None  # not computed: a deleted version's own bytes need a full mark (gc has it)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "label": self.label, "record": self.digest, "deleted_at": self.deleted_at,
                "purge_after": self.purge_after, "bytes": self.bytes}


def label_of(key: tuple[str, ...]) -> str:
    namespace, *rest = key
    return f"{rest[0]}/{rest[1]}@{rest[2]}" if namespace == VERSIONS else "/".join(rest)


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else clock.now()


def items(home: Home, *prefix: str) -> list[DeletedItem]:
    """Every kept deletion (under `prefix`, e.g. VERSIONS, G, D), sorted by name."""
    found = []
    for key, target in home.store.list_names(DELETED, *prefix):
        full = (*prefix, *key)
        if full[0] not in _KINDS:
            continue
        record = DeletedRecord.from_json(home.store.get_manifest(target))
        found.append(DeletedItem(full, record.kind, record.label, record.record, record.deleted_at,
                                 record.purge_after, target))
    return found


def expired(home: Home, now: dt.datetime | None = None) -> list[DeletedItem]:
    """Deletions whose retention period is over at `now`: gc may purge them."""
    when = _now(now)
    return [i for i in items(home) if parse_time(i.purge_after, "purge_after") <= when]


def kept(home: Home, now: dt.datetime | None = None) -> list[DeletedItem]:
    """Deletions still retained at `now` (each says until when: purge_after)."""
    gone = {i.key for i in expired(home, now)}
    return [i for i in items(home) if i.key not in gone]


def purge(home: Home, to_purge: list[DeletedItem]) -> list[DeletedItem]:
    """Remove these deleted names (their data becomes garbage for gc). The caller holds the store's
    exclusive lock or the gallery lock. A name that changed since it was listed is left alone."""
    done = []
    for item in to_purge:
        if home.store.get_name(DELETED, *item.key) == item.name_target:
            home.store.delete_name(DELETED, *item.key)
            done.append(item)
    return done


def hide(home: Home, key: tuple[str, ...], *, now: dt.datetime | None = None,
         retention: dt.timedelta = DEFAULT_RETENTION) -> DeletedItem:
    """Move the live name `key` to the deleted namespace. The caller holds the gallery lock."""
    namespace, *rest = key
    record = home.store.get_name(namespace, *rest)
    label = label_of(key)
    if record is None:
        raise NotFound(f"{_KINDS[namespace]} {label} does not exist", hint="nothing to delete")
    when = _now(now)
    deleted = DeletedRecord(_KINDS[namespace], label, record, stamp(when), stamp(when + retention))
    existing = home.store.get_name(DELETED, *key)
    if existing is not None:
        earlier = DeletedRecord.from_json(home.store.get_manifest(existing))
        if earlier.record != record:
            raise Refused(f"a deleted {label} is already kept (until {earlier.purge_after})",
                          hint="restore that one first, or delete this one for good with --purge")
        deleted, target = earlier, existing  # a delete interrupted after naming: finish it
    else:
        target = home.store.put_manifest(deleted.to_json())
        home.store.set_name(DELETED, *key, target=target, create_only=True)
    home.store.delete_name(namespace, *rest)
    return DeletedItem(key, deleted.kind, label, record, deleted.deleted_at, deleted.purge_after, target)


def unhide(home: Home, key: tuple[str, ...]) -> DeletedItem:
    """Put a deleted name back exactly (the same record digest). The caller holds the gallery lock and has
    checked that the parent is live."""
    namespace, *rest = key
    label = label_of(key)
    target = home.store.get_name(DELETED, *key)
    if target is None:
        raise NotFound(f"no deleted {_KINDS[namespace]} {label} is kept",
                       hint="list what is kept with imgtool version list G/D --deleted (or gc --dry-run)")
    record = DeletedRecord.from_json(home.store.get_manifest(target))
    current = home.store.get_name(namespace, *rest)
    if current is not None and current != record.record:
        raise AlreadyExists(f"{_KINDS[namespace]} {label} exists again (created after the delete)",
                            hint="delete or rename the new one first; the deleted one stays kept")
    if current is None:
        home.store.set_name(namespace, *rest, target=record.record, create_only=True)
    home.store.delete_name(DELETED, *key)
    return DeletedItem(key, record.kind, label, record.record, record.deleted_at, record.purge_after, target)


def purge_under(home: Home, *prefix: str) -> list[DeletedItem]:
    """Purge every kept deletion under a prefix (a definition's deleted versions, when it goes for good)."""
    return purge(home, items(home, *prefix))


def deleted_hint(home: Home, key: tuple[str, ...]) -> str | None:
    """If `key` was soft-deleted, a hint saying until when and how to restore it."""
    target = home.store.get_name(DELETED, *key)
    if target is None:
        return None
    record = DeletedRecord.from_json(home.store.get_manifest(target))
    command = {"version": "version", "definition": "definition", "gallery": "gallery"}[record.kind]
    return f"it was deleted at {record.deleted_at} and is kept until {record.purge_after}: " \
           f"imgtool {command} restore {record.label}"
