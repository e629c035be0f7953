"""Revocation: a version marked unfit (vulnerable, broken) stays readable but is kept from new use.

A revoked version is never `latest`, `vm new` refuses it unless told otherwise (and records that it was
told), and every VM standing on it is flagged. The flag is derived, not copied into each VM: a VM's
receipt names its version (G/D@X.Y.Z), and that name's current record says whether it is revoked, so a
revocation learned later (a remote sync) reaches VMs made long before.
"""

from __future__ import annotations

import datetime as dt

from imgtool.clock import stamp
from imgtool.errors import Refused
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.lifecycle_model import Revocation
from imgtool.gallery.model import ImageVersion
from imgtool.gallery.version_changes import update_version
from imgtool.home import Home
from imgtool.names import parse_image_ref
from imgtool.vm import record as vmrecord


def revoke(home: Home, text: str, reason: str, *, now: dt.datetime | None = None) -> tuple[ImageVersion, list[str]]:
    """Mark G/D@X.Y.Z revoked (a new record moves the name); returns it and the VMs standing on it."""
    parse_image_ref(text, require_version=True)
    revocation = Revocation(reason, stamp(now))
    updated = update_version(home, text, revocation=revocation)
    return updated, vmrecord.vms_using(home, updated.gallery, updated.definition, updated.version)


def lift(home: Home, text: str) -> tuple[ImageVersion, Revocation]:
    """Lift G/D@X.Y.Z's revocation (a new record moves the name): it can be `latest` and used by vm new
    again; returns the version and the revocation that was lifted. A version not revoked is refused."""
    ref = parse_image_ref(text, require_version=True)
    current = revocation_of(home, f"{ref.gallery}/{ref.definition}@{ref.version}")
    if current is None:
        raise Refused(f"version {text} is not revoked", hint=f"imgtool version show {text}")
    return update_version(home, text, revocation=None), current


def revocation_of(home: Home, image: str) -> Revocation | None:
    """The revocation of the version a VM receipt names (G/D@X.Y.Z), if its current record has one."""
    ref = parse_image_ref(image, require_version=True)
    digest = home.store.get_name(VERSIONS, ref.gallery, ref.definition, str(ref.version))
    if digest is None:
        return None
    return ImageVersion.from_json(home.store.get_manifest(digest)).revocation


def vm_flags(home: Home, images: dict[str, str]) -> dict[str, Revocation]:
    """VM name -> revocation, for the VMs (name -> image) whose version is revoked."""
    by_image: dict[str, Revocation | None] = {}
    flags: dict[str, Revocation] = {}
    for name, image in images.items():
        if image not in by_image:
            by_image[image] = revocation_of(home, image)
        found = by_image[image]
        if found is not None:
            flags[name] = found
    return flags


def start_warnings(home: Home, name: str) -> list[str]:
    """What `vm start` should warn about before booting this VM."""
    record = vmrecord.load(home, name)
    found = revocation_of(home, record.image)
    if found is None:
        return []
    return [f"VM '{name}' stands on {record.image}, which is revoked: {found.reason} (since {found.when})"]
