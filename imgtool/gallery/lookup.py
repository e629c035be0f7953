"""Reading image versions: list, resolve `latest`, look one up (no writes)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgtool import clock
from imgtool.errors import NotFound
from imgtool.gallery import recycle
from imgtool.gallery.galleries import VERSIONS, get_definition_with_digest
from imgtool.gallery.model import Disk, ImageVersion
from imgtool.gallery.version_index import Summary, summaries
from imgtool.gallery.versions import Candidate, Verdict, resolve_latest, why_nothing
from imgtool.home import Home
from imgtool.names import DefinitionRef, ImageRef, Version, parse_image_ref

if TYPE_CHECKING:
    from imgtool.capture.sources import VersionDisks


def list_versions(home: Home, ref: DefinitionRef) -> list[Summary]:
    """The versions of a definition, lowest first (summaries; get_version reads a whole record)."""
    get_definition_with_digest(home, ref)
    # Names were validated when published; a plain split is enough to order them (and 5x faster).
    return sorted(summaries(home, ref), key=lambda s: tuple(map(int, s.version.split("."))))


def latest_of(found: list[Summary], *, today: str | None = None) -> tuple[Version | None, list[Verdict]]:
    """`latest` among `found` on `today` (default: the UTC date now; end-of-life dates are compared with it)."""
    candidates = [Candidate(Version(*map(int, s.version.split("."))), s.exclude_from_latest, s.end_of_life,
                            s.check, s.revoked) for s in found]
    return resolve_latest(candidates, today=today or clock.today())


def resolve(home: Home, ref: DefinitionRef) -> tuple[Version | None, list[Verdict]]:
    """Which version `latest` picks, and a verdict for every candidate."""
    return latest_of(list_versions(home, ref))


def _nothing_hint(ref: DefinitionRef, verdicts: list[Verdict]) -> str:
    pending = [v for v in verdicts if "boot check pending" in v.reason]
    if pending:
        return f"run its boot check: imgtool version check {ref}@{pending[0].version}, or name a version (@X.Y.Z)"
    if not verdicts:
        return f"publish one: imgtool publish {ref} --version 1.0.0 --os-disk FILE"
    return f"see imgtool version resolve {ref} --explain, or name a version (@X.Y.Z)"


def get_version(home: Home, text: str | ImageRef) -> tuple[ImageVersion, str]:
    """The version named by G/D@X.Y.Z or G/D@latest (or G/D), and its record digest."""
    ref = parse_image_ref(text) if isinstance(text, str) else text
    version = ref.version
    if version is None:
        version, verdicts = resolve(home, ref.definition_ref)
        if version is None:
            raise NotFound(f"{ref.definition_ref}@latest picks nothing: {why_nothing(verdicts)}",
                           hint=_nothing_hint(ref.definition_ref, verdicts))
    digest = home.store.get_name(VERSIONS, ref.gallery, ref.definition, str(version))
    if digest is None:
        get_definition_with_digest(home, ref.definition_ref)
        deleted = recycle.deleted_hint(home, (VERSIONS, ref.gallery, ref.definition, str(version)))
        raise NotFound(f"version {ref.definition_ref}@{version} does not exist",
                       hint=deleted or f"list versions with imgtool version list {ref.definition_ref}")
    return ImageVersion.from_json(home.store.get_manifest(digest)), digest


def version_disks(home: Home) -> VersionDisks:
    """The resolver capture takes for `G/D@X.Y.Z` sources: the version's label and disks."""

    def resolve(ref: str) -> tuple[str, tuple[Disk, ...]]:
        version, _ = get_version(home, ref)
        return version.label, version.disks

    return resolve
