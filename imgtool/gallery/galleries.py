"""Galleries and image definitions: create, read, update (deletes and restores: gallery/removal.py).

Every change writes a new record (a manifest) and then moves the name, under the
store's shared lock (so gc cannot collect the record in between) and the
gallery's own lock (so uniqueness checks and deletes do not race).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

from imgtool.clock import stamp
from imgtool.errors import AlreadyExists, InvalidArgument, NotFound
from imgtool.gallery.model import UPDATABLE_DEFINITION, Definition, Gallery
from imgtool.home import Home
from imgtool.names import DefinitionRef, check_name
from store.lock import file_lock

GALLERIES = "galleries"
DEFINITIONS = "definitions"
VERSIONS = "versions"


@contextlib.contextmanager
def gallery_lock(home: Home, gallery: str) -> Iterator[None]:
    """The store's shared lock plus an exclusive lock on one gallery's names."""
    store = home.store
    with store.writing(), file_lock(store.layout.locks / f"gallery-{check_name(gallery, 'gallery')}.lock"):
        yield


# -- galleries ---------------------------------------------------------------


def create_gallery(home: Home, name: str, description: str = "") -> Gallery:
    gallery = Gallery(check_name(name, "gallery"), description)
    exists = AlreadyExists(f"gallery '{name}' already exists",
                           hint="choose another name, or use imgtool gallery update")
    with gallery_lock(home, name):
        if home.store.get_name(GALLERIES, name) is not None:
            raise exists  # before writing the record: a refused create leaves nothing behind
        ref = home.store.put_manifest(gallery.to_json())
        try:
            home.store.set_name(GALLERIES, name, target=ref, create_only=True)
        except AlreadyExists:  # a concurrent create won
            raise exists from None
    return gallery


def get_gallery(home: Home, name: str) -> Gallery:
    ref = home.store.get_name(GALLERIES, check_name(name, "gallery"))
    if ref is None:
        raise NotFound(f"gallery '{name}' does not exist", hint="list galleries with imgtool gallery list")
    return Gallery.from_json(home.store.get_manifest(ref))


def list_galleries(home: Home) -> list[Gallery]:
    return [Gallery.from_json(home.store.get_manifest(ref)) for _key, ref in home.store.list_names(GALLERIES)]


def update_gallery(home: Home, name: str, *, description: str) -> Gallery:
    with gallery_lock(home, name):
        updated = dataclasses.replace(get_gallery(home, name), description=description, updated=stamp())
        home.store.set_name(GALLERIES, name, target=home.store.put_manifest(updated.to_json()))
    return updated


# -- definitions -------------------------------------------------------------


def get_definition_with_digest(home: Home, ref: DefinitionRef) -> tuple[Definition, str]:
    digest = home.store.get_name(DEFINITIONS, ref.gallery, ref.definition)
    if digest is None:
        get_gallery(home, ref.gallery)
        raise NotFound(f"definition '{ref}' does not exist",
                       hint=f"list them with imgtool definition list {ref.gallery}")
    return Definition.from_json(home.store.get_manifest(digest)), digest


def get_definition(home: Home, ref: DefinitionRef) -> Definition:
    return get_definition_with_digest(home, ref)[0]


def list_definitions(home: Home, gallery: str) -> list[Definition]:
    get_gallery(home, gallery)
    return [Definition.from_json(home.store.get_manifest(digest))
            for _key, digest in home.store.list_names(DEFINITIONS, gallery)]


def _check_boot_check_fits(definition: Definition) -> None:
    """Only a console check can run on a specialized image: ssh and cloud-init need the provisioned user
    that a specialized VM never gets, so such a check would leave every new version pending forever."""
    check = definition.boot_check
    if check is not None and check.kind != "console" and definition.os_state == "specialized":
        ref = f"{definition.gallery}/{definition.name}"
        raise InvalidArgument(f"a {check.kind} boot check cannot run on specialized definition {ref}: VMs of "
                              "a specialized image get no provisioned user to log in as",
                              hint="wait for a console line instead: --require-boot-check --boot-check "
                                   "console:TEXT (e.g. console:login:)")


def create_definition(home: Home, definition: Definition) -> Definition:
    check_name(definition.name, "definition")
    _check_boot_check_fits(definition)
    with gallery_lock(home, definition.gallery):
        get_gallery(home, definition.gallery)
        for other in list_definitions(home, definition.gallery):
            if other.identifier == definition.identifier and other.name != definition.name:
                raise AlreadyExists(
                    f"identifier {'/'.join(definition.identifier)} is already used by "
                    f"{definition.gallery}/{other.name}",
                    hint="publisher/offer/sku must be unique in a gallery")
        exists = AlreadyExists(f"definition '{definition.gallery}/{definition.name}' already exists",
                               hint="choose another name, or use imgtool definition update")
        if home.store.get_name(DEFINITIONS, definition.gallery, definition.name) is not None:
            raise exists  # before writing the record: a refused create leaves nothing behind
        digest = home.store.put_manifest(definition.to_json())
        try:
            home.store.set_name(DEFINITIONS, definition.gallery, definition.name, target=digest, create_only=True)
        except AlreadyExists:  # a concurrent create won
            raise exists from None
    return definition


def update_definition(home: Home, ref: DefinitionRef, **changes: Any) -> Definition:
    bad = set(changes) - set(UPDATABLE_DEFINITION) - {"vcpus", "memory_mib"}
    if bad:
        raise InvalidArgument(f"{', '.join(sorted(bad))} cannot change after creation",
                              hint=f"updatable: {', '.join(UPDATABLE_DEFINITION)}")
    with gallery_lock(home, ref.gallery):
        current = get_definition(home, ref)
        updated = dataclasses.replace(current, updated=stamp(), **changes)
        if "boot_check" in changes:
            _check_boot_check_fits(updated)
        digest = home.store.put_manifest(updated.to_json())
        home.store.set_name(DEFINITIONS, ref.gallery, ref.definition, target=digest)
    return updated
