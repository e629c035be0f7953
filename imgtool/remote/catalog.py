"""A remote definition's versions and which one `latest` picks there (from manifest annotations)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from imgtool import clock
from imgtool.errors import Corrupt, ImgtoolError, InvalidArgument, NotFound
from imgtool.gallery.versions import Candidate, Verdict, resolve_latest
from imgtool.names import Version
from imgtool.oci.target import Target, read_all
from imgtool.remote.format import VersionManifest, parse_config, parse_manifest
from imgtool.remote.knowledge import version_tags


@dataclass(frozen=True)
class RemoteVersion:
    version: str
    manifest: str
    exclude_from_latest: bool
    end_of_life: str | None
    published: str | None
    check: str | None = None  # the boot check state the publisher recorded (None: none required)
    revoked: str | None = None  # the reason, when a trusted key revoked it (imgtool.flows.revoking)
    annotations: dict[str, str] = field(default_factory=dict, compare=False)


def remote_versions(target: Target, repo: str) -> list[RemoteVersion]:
    """Every imgtool version tag of `repo`, lowest first. Tags that are not imgtool versions are skipped
    beside imgtool's; a repository whose version-like tags are all something else is refused, saying why."""
    found = []
    skipped: ImgtoolError | None = None
    tags = target.tags(repo)
    if not tags:
        check_repository(target, repo)
    for tag in reversed(version_tags(tags)):
        try:
            fetched = target.get_manifest(repo, tag)
            manifest = parse_manifest(fetched.data, fetched.digest, f"{repo}:{tag}")
            revoked = notes_revoked(manifest.annotations) or config_revoked(target, repo, manifest)
        except (InvalidArgument, Corrupt, NotFound) as exc:
            skipped = skipped or exc
            continue
        notes = manifest.annotations
        found.append(RemoteVersion(tag, fetched.digest, notes.get("org.imgtool.exclude-from-latest") == "true",
                                   notes.get("org.imgtool.end-of-life"),
                                   notes.get("org.opencontainers.image.created"), notes.get("org.imgtool.boot-check"),
                                   revoked, dict(notes)))
    if not found and skipped is not None:
        raise type(skipped)(f"{target.label}:{repo} holds no imgtool version: {skipped.message}",
                            hint=skipped.hint)
    return found


def notes_revoked(notes: dict[str, str]) -> str | None:
    reason = notes.get("org.imgtool.revoked")
    return f"by its publisher: {reason}" if reason else None


def config_revoked(target: Target, repo: str, manifest: VersionManifest) -> str | None:
    """The revocation the version's own record carries (pushed --with-revocation, or by an imgtool that
    wrote no annotation): honoured by every remote view, since it can only make a version less usable."""
    data = read_all(target.get_blob(repo, manifest.config.digest, size=manifest.config.size))
    record, _definition, _gallery = parse_config(data, f"config of {repo}")
    revocation = record.get("revocation")
    if isinstance(revocation, dict) and isinstance(revocation.get("reason"), str):
        return f"by its publisher: {revocation['reason'][:512]}"
    return None


def check_repository(target: Target, repo: str) -> None:
    """NotFound unless `repo` exists on the remote: a misspelled definition, a missing layout folder or a
    URL that is not a registry must not look like a definition without versions."""
    if target.has_repository(repo):
        return
    gallery, definition = repo.split("/")[-2:]
    raise NotFound(f"{target.label} has no definition {gallery}/{definition} (no repository {repo})",
                   hint=f"check the spelling; a definition gets there when pushed: imgtool push "
                        f"{gallery}/{definition} {target.label}")


def resolve(found: list[RemoteVersion], *, refused: dict[str, str] | None = None) -> tuple[Version | None,
                                                                                           list[Verdict]]:
    """`latest` among `found`; versions in `refused` (version -> why, e.g. the trust policy) never win."""
    refused = refused or {}
    candidates = [Candidate(Version.parse(v.version), v.exclude_from_latest or v.version in refused, v.end_of_life,
                            v.check, v.revoked) for v in found]
    chosen, verdicts = resolve_latest(candidates, today=clock.today())
    return chosen, [Verdict(v.version, v.chosen, f"dropped: {refused[str(v.version)]}")
                    if str(v.version) in refused else v for v in verdicts]


# Judges a definition's remote versions (the trust policy): version -> why it may not be used.
Screen = Callable[[str, list[RemoteVersion]], dict[str, str]]
