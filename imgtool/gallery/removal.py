"""Deleting and restoring definitions and galleries, and restoring versions (soft delete, see recycle.py).

A definition can be deleted once it has no live versions (its deleted versions stay kept on their own
clocks); a gallery once it has no live definitions. `purge` deletes for good, together with the
deletions kept under it. Restoring a child needs its parent live: restore the gallery, then the
definition, then the version.
"""

from __future__ import annotations

import datetime as dt

from imgtool.errors import AlreadyExists, NotFound, Refused
from imgtool.gallery import recycle
from imgtool.gallery.galleries import (
    DEFINITIONS,
    GALLERIES,
    VERSIONS,
    gallery_lock,
    get_definition,
    get_gallery,
    list_definitions,
)
from imgtool.gallery.lifecycle_model import DeletedRecord
from imgtool.gallery.model import Definition, Gallery, ImageVersion
from imgtool.home import Home
from imgtool.names import DefinitionRef, check_name, parse_image_ref


def restore_version(home: Home, text: str) -> ImageVersion:
    """Bring a deleted version back under its name, with the very record it had."""
    ref = parse_image_ref(text, require_version=True)
    with gallery_lock(home, ref.gallery):
        _need_live_definition(home, ref.definition_ref)
        item = recycle.unhide(home, (VERSIONS, ref.gallery, ref.definition, str(ref.version)))
    return ImageVersion.from_json(home.store.get_manifest(item.digest))


def _need_live_definition(home: Home, ref: DefinitionRef) -> None:
    if home.store.get_name(DEFINITIONS, ref.gallery, ref.definition) is not None:
        return
    if recycle.deleted_hint(home, (DEFINITIONS, ref.gallery, ref.definition)):
        raise Refused(f"definition {ref} is deleted", hint=f"restore it first: imgtool definition restore {ref}")
    get_definition(home, ref)  # NotFound with the usual hint


def delete_definition(home: Home, ref: DefinitionRef, *, purge: bool = False, now: dt.datetime | None = None,
                      retention: dt.timedelta = recycle.DEFAULT_RETENTION) -> recycle.DeletedItem | None:
    """Delete a definition without live versions: kept as deleted, or for good (and its deleted versions)."""
    with gallery_lock(home, ref.gallery):
        get_definition(home, ref)
        versions = [key[0] for key, _ in home.store.list_names(VERSIONS, ref.gallery, ref.definition)]
        if versions:
            raise Refused(f"definition '{ref}' still has versions: {', '.join(versions[:10])}"
                          + (" ..." if len(versions) > 10 else ""),
                          hint="delete its versions first with imgtool version delete")
        key = (DEFINITIONS, ref.gallery, ref.definition)
        if not purge:
            return recycle.hide(home, key, now=now, retention=retention)
        recycle.purge_under(home, VERSIONS, ref.gallery, ref.definition)
        home.store.delete_name(*key)
        return None


def restore_definition(home: Home, ref: DefinitionRef) -> Definition:
    """Bring a deleted definition back (its deleted versions stay deleted until restored one by one)."""
    with gallery_lock(home, ref.gallery):
        _need_live_gallery(home, ref.gallery)
        target = home.store.get_name(recycle.DELETED, DEFINITIONS, ref.gallery, ref.definition)
        if target is not None:
            _check_identifier_free(home, ref, target)
        item = recycle.unhide(home, (DEFINITIONS, ref.gallery, ref.definition))
    return Definition.from_json(home.store.get_manifest(item.digest))


def _check_identifier_free(home: Home, ref: DefinitionRef, deleted_target: str) -> None:
    hidden = DeletedRecord.from_json(home.store.get_manifest(deleted_target))
    definition = Definition.from_json(home.store.get_manifest(hidden.record))
    for other in list_definitions(home, ref.gallery):
        if other.identifier == definition.identifier and other.name != definition.name:
            raise AlreadyExists(f"identifier {'/'.join(definition.identifier)} is now used by "
                                f"{ref.gallery}/{other.name}", hint="publisher/offer/sku must be unique in a "
                                "gallery: delete that definition first")


def _need_live_gallery(home: Home, gallery: str) -> None:
    if home.store.get_name(GALLERIES, check_name(gallery, "gallery")) is not None:
        return
    if recycle.deleted_hint(home, (GALLERIES, gallery)):
        raise Refused(f"gallery {gallery} is deleted", hint=f"restore it first: imgtool gallery restore {gallery}")
    raise NotFound(f"gallery '{gallery}' does not exist", hint="list galleries with imgtool gallery list")


def delete_gallery(home: Home, name: str, *, purge: bool = False, now: dt.datetime | None = None,
                   retention: dt.timedelta = recycle.DEFAULT_RETENTION) -> recycle.DeletedItem | None:
    """Delete a gallery without live definitions: kept as deleted, or for good (with what is kept under it)."""
    with gallery_lock(home, name):
        get_gallery(home, name)
        children = [key[0] for key, _ in home.store.list_names(DEFINITIONS, name)]
        if children:
            raise Refused(f"gallery '{name}' still has definitions: {', '.join(children)}",
                          hint="delete them first with imgtool definition delete")
        if not purge:
            return recycle.hide(home, (GALLERIES, name), now=now, retention=retention)
        recycle.purge_under(home, VERSIONS, name)
        recycle.purge_under(home, DEFINITIONS, name)
        home.store.delete_name(GALLERIES, name)
        return None


def restore_gallery(home: Home, name: str) -> Gallery:
    with gallery_lock(home, name):
        item = recycle.unhide(home, (GALLERIES, check_name(name, "gallery")))
    return Gallery.from_json(home.store.get_manifest(item.digest))
