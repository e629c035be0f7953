"""Reading image versions: list, resolve `latest`, look one up (no writes)."""

from __future__ import annotations

import datetime as dt

from imgtool.errors import NotFound
from imgtool.gallery import VERSIONS, get_definition_with_digest
from imgtool.home import Home
from imgtool.model import ImageVersion
from imgtool.names import DefinitionRef, ImageRef, parse_image_ref
from imgtool.versions import Candidate, Verdict, Version, resolve_latest


def list_versions(home: Home, ref: DefinitionRef) -> list[tuple[ImageVersion, str]]:
    get_definition_with_digest(home, ref)
    found = [(ImageVersion.from_json(home.store.get_manifest(d)), d)
             for _key, d in home.store.list_names(VERSIONS, ref.gallery, ref.definition)]
    return sorted(found, key=lambda item: Version.parse(item[0].version))


def resolve(home: Home, ref: DefinitionRef) -> tuple[Version | None, list[Verdict]]:
    candidates = [Candidate(Version.parse(v.version), v.exclude_from_latest, v.end_of_life)
                  for v, _d in list_versions(home, ref)]
    return resolve_latest(candidates, today=dt.date.today().isoformat())


def get_version(home: Home, text: str | ImageRef) -> tuple[ImageVersion, str]:
    """The version named by G/D@X.Y.Z or G/D@latest (or G/D), and its record digest."""
    ref = parse_image_ref(text) if isinstance(text, str) else text
    version = ref.version
    if version is None:
        version, _ = resolve(home, ref.definition_ref)
        if version is None:
            raise NotFound(f"{ref.definition_ref} has no version that latest can pick",
                           hint="publish one, or name a version explicitly (@X.Y.Z)")
    digest = home.store.get_name(VERSIONS, ref.gallery, ref.definition, str(version))
    if digest is None:
        get_definition_with_digest(home, ref.definition_ref)
        raise NotFound(f"version {ref.definition_ref}@{version} does not exist",
                       hint=f"list versions with imgtool version list {ref.definition_ref}")
    return ImageVersion.from_json(home.store.get_manifest(digest)), digest
