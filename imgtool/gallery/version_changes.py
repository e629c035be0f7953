"""Changing a published version's record: update its settings, delete it (kept restorable, or purged).

Kept apart from publishing (gallery/image_versions.py) so that what only edits records (boot check
results, revocations, the remote layer) does not load capture with it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from imgtool import clock
from imgtool.errors import InvalidArgument, Refused
from imgtool.gallery import recycle
from imgtool.gallery.galleries import VERSIONS, gallery_lock
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion, check_date
from imgtool.home import Home
from imgtool.names import parse_image_ref
from imgtool.vm import record as vmrecord


def check_block_deletion(block: bool, end_of_life: str | None) -> None:
    """Blocking deletion before the end of life needs an end of life that is still ahead."""
    if not block:
        return
    if end_of_life is None:
        raise InvalidArgument("--block-deletion-before-end-of-life needs an end of life to block until",
                              hint="give --end-of-life YYYY-MM-DD (a date ahead)")
    if end_of_life[:10] <= clock.today():
        raise InvalidArgument(f"end of life {end_of_life[:10]} is not ahead, so there is nothing to block deletion "
                              "before", hint="give a later --end-of-life, or drop the deletion block")


def update_version(home: Home, text: str, **changes: Any) -> ImageVersion:
    ref = parse_image_ref(text, require_version=True)
    if "end_of_life" in changes:
        changes["end_of_life"] = check_date(changes["end_of_life"], "end of life")
    with gallery_lock(home, ref.gallery):
        current, _ = get_version(home, ref)
        if changes.get("block_deletion_before_end_of_life") is True:  # turning the block on
            check_block_deletion(True, changes.get("end_of_life", current.end_of_life))
        updated = current.updated_with(**changes)
        digest = home.store.put_manifest(updated.to_json())
        home.store.set_name(VERSIONS, ref.gallery, ref.definition, current.version, target=digest)
    return updated


def delete_version(home: Home, text: str, *, purge: bool = False, now: dt.datetime | None = None,
                   retention: dt.timedelta = recycle.DEFAULT_RETENTION) -> recycle.DeletedItem | None:
    """Delete a version: kept as deleted for `retention` (restorable), or for good with `purge`.

    Refused while VMs stand on it or before a blocking end of life. Returns what is kept (None: purged)."""
    ref = parse_image_ref(text, require_version=True)
    with gallery_lock(home, ref.gallery):
        current, _ = get_version(home, ref)
        users = vmrecord.vms_using(home, current.gallery, current.definition, current.version)
        if users:
            raise Refused(f"version {text} is used by VMs: {', '.join(users)}",
                          hint="delete those VMs first (imgtool vm delete)")
        if current.block_deletion_before_end_of_life and (
                current.end_of_life is None or current.end_of_life[:10] > clock.today()):
            raise Refused(f"version {text} blocks deletion before its end of life ({current.end_of_life})",
                          hint="wait for the end of life, or clear the block with imgtool version update")
        key = (VERSIONS, ref.gallery, ref.definition, current.version)
        if purge:
            home.store.delete_name(*key)
            return None
        return recycle.hide(home, key, now=now, retention=retention)
