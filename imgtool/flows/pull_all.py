"""Pulling a whole definition (`pull REMOTE:G/D --all`) or gallery (`pull REMOTE:G`).

Every version the remote holds is pulled, one at a time, lowest first, through the same pull as one
version (trust policy, pins, revocations, verification, only missing chunks), except versions a
trusted key revoked there and versions the remote's trust policy refuses, which are skipped with the
reason. Each version is named when it is complete, so an interrupted run resumes where it stopped: a
rerun finds the versions already pulled "present" and fetches only what the others still lack. One
version that fails does not stop the others; the caller reports it and exits non-zero.

A gallery's definitions come from the remote's listing of its repositories (the registry's
/v2/_catalog, or the layout folder); a registry without one (GHCR, Docker Hub) is said plainly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imgtool.errors import ImgtoolError, InvalidArgument, NotFound
from imgtool.flows import revoking, sharing, signing
from imgtool.home import Home
from imgtool.names import check_name, ref_fields
from imgtool.oci.target import Target
from imgtool.remote import catalog
from imgtool.remote import format as fmt
from imgtool.remote.connect import connected
from imgtool.remote.remotes import Remote, split_ref
from imgtool.vocab import PullStatus
from store.progress import Progress


@dataclass(frozen=True)
class Outcome:
    ref: str  # G/D@X.Y.Z
    status: PullStatus
    detail: str | None = None  # why skipped or failed; the manifest digest otherwise

    def to_json(self) -> dict[str, Any]:
        return {**ref_fields(self.ref), "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Planned:
    ref: str
    skip: str | None  # why it is not pulled (revoked, refused by the trust policy), or None


def parse_scope(text: str) -> tuple[str, str, str | None]:
    """REMOTE:G or REMOTE:G/D -> (remote, gallery, definition or None); a version is refused here."""
    remote, rest = split_ref(text)
    if "@" in rest:
        whole = text.split("@", maxsplit=1)[0]
        raise InvalidArgument(f"'{text}' names a version; --all pulls every version of a definition",
                              hint=f"imgtool pull {text} (one version), or imgtool pull {whole} --all")
    gallery, _, definition = rest.partition("/")
    check_name(gallery, "gallery")
    if definition:
        check_name(definition, "definition")
    return remote, gallery, definition or None


def plan(home: Home, remote_name: str, gallery: str, definition: str | None) -> list[Planned]:
    """What a pull of the definition (or, with None, the whole gallery) would do, version by version."""
    with connected(home, remote_name) as (remote, target):
        definitions = [definition] if definition else _definitions(target, remote.prefix, gallery, remote_name)
        planned: list[Planned] = []
        for name in definitions:
            planned += _plan_definition(home, remote, target, gallery, name)
    return planned


def _definitions(target: Target, prefix: str, gallery: str, remote_name: str) -> list[str]:
    # Listing is not part of the OCI target protocol (not every registry offers it): the registry client
    # and the layout folder have `repositories`; anything else cannot list.
    listing = getattr(target, "repositories", None)
    if listing is None:
        raise NotFound(f"{remote_name} cannot list its repositories",
                       hint="pull each definition instead: imgtool pull REMOTE:GALLERY/DEFINITION --all")
    base = fmt.repository(prefix, gallery, "x").rsplit("/", 1)[0] + "/"
    found = sorted({fmt.name_of_component(repo[len(base):]) for repo in listing()
                    if repo.startswith(base) and "/" not in repo[len(base):]})
    if not found:
        raise NotFound(f"{remote_name} holds no definitions of gallery {gallery}",
                       hint=f"check the name; one definition: imgtool remote versions {remote_name}:{gallery}/D")
    return found


def _plan_definition(home: Home, remote: Remote, target: Target, gallery: str, definition: str) -> list[Planned]:
    repo = fmt.repository(remote.prefix, gallery, definition)
    found = catalog.remote_versions(target, repo)
    if not found:
        raise NotFound(f"{remote.name} has no versions of {gallery}/{definition}",
                       hint=f"check the name: imgtool remote versions {remote.name}:{gallery}/{definition}")
    revoked = revoking.revoked_tags(home, remote, target, repo, [(v.version, v.manifest, v.annotations) for v in found])
    refused = signing.screen(home, remote, target, repo, found)
    return [Planned(f"{gallery}/{definition}@{v.version}",
                    f"revoked: {revoked[v.version]}" if v.version in revoked else refused.get(v.version))
            for v in found]


def pull_all(home: Home, text: str, *, progress: Progress | None = None,
             each: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Pull every version `plan` allows; returns one outcome per version (`each` sees them as they come)."""
    remote_name, gallery, definition = parse_scope(text)
    outcomes: list[Outcome] = []
    for planned in plan(home, remote_name, gallery, definition):
        outcome = _pull_one(home, remote_name, planned, progress)
        outcomes.append(outcome)
        if each is not None:
            each(outcome)
    return outcomes


def _pull_one(home: Home, remote_name: str, planned: Planned, progress: Progress | None) -> Outcome:
    if planned.skip is not None:
        return Outcome(planned.ref, PullStatus.SKIPPED, planned.skip)
    try:
        result = sharing.pull_ref(home, f"{remote_name}:{planned.ref}", progress=progress)
    except ImgtoolError as exc:  # one version's failure is reported; the others still come
        return Outcome(planned.ref, PullStatus.FAILED, exc.message)
    return Outcome(planned.ref, result.status, result.manifest)
