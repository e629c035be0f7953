"""Revocations on remotes: push a signed statement, find and verify them, refuse and sync revoked versions.

- push: `push_revocation` signs "G/D@V at this manifest digest is revoked, because REASON" with the
  remote's signing key (or the one given) and attaches it to the version's manifest as a referrer.
- use: `refuse_if_revoked` runs in the pull check, before anything is stored (cache hits too), so
  pull, `vm new REMOTE:…` and everything built on pull refuse a revoked version; a local copy pulled
  at that digest is marked revoked on the way (a later pull tells this store, as sync does).
- `remote versions` marks revoked versions (`revoked_tags`), so the remote's `latest` skips them.
- `sync` looks for revocations of every local version pulled from a remote (at the manifest digest
  pulled, and at the one its tag names now) and marks the local copy revoked, which flags its VMs.

Only statements signed by a key the remote is trusted with (imgtool trust add) count; others are
reported and ignored, never trusted.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from imgtool.clock import now, parse_time
from imgtool.errors import NotFound, Refused
from imgtool.flows.signing import registry_of
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.lifecycle_model import Revocation
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion, PulledFrom
from imgtool.gallery.version_changes import update_version
from imgtool.home import Home
from imgtool.names import ref_fields
from imgtool.oci import media, referrers
from imgtool.oci.descriptor import Descriptor
from imgtool.oci.target import Target
from imgtool.remote import format as fmt
from imgtool.remote.connect import connected
from imgtool.remote.remotes import Remote
from imgtool.trust import revocations
from imgtool.trust import signatures as sig
from imgtool.trust.homes import keyring, trust_store
from imgtool.vm import record as vmrecord

MAX_STATEMENTS = 64  # per version; more is a flood


def _name(remote: Remote, repo: str, gallery: str, definition: str, version: str) -> sig.SignedName:
    return sig.SignedName(registry_of(remote), repo, gallery, definition, version)


# -- push ---------------------------------------------------------------------------------------------


def push_revocation(home: Home, text: str, remote_name: str, *, key_name: str | None = None) -> dict[str, Any]:
    """Attach a signed revocation of the locally revoked G/D@V to its manifest on `remote_name`."""
    version, _ = get_version(home, text)
    if version.revocation is None:
        raise Refused(f"{version.label} is not revoked here",
                      hint=f"revoke it first: imgtool version revoke {version.label} --reason TEXT")
    when = parse_time(version.revocation.when, "revoked at")
    return _push_statement(home, version, remote_name, key_name, version.revocation.reason, when, lift=False)


def push_lift(home: Home, text: str, remote_name: str, reason: str, *, key_name: str | None = None,
              at: datetime | None = None) -> dict[str, Any]:
    """Attach a signed lifting of G/D@V's revocation (made at `at`, default now) to its manifest on
    `remote_name`; the version must not be revoked here (lift it locally first)."""
    version, _ = get_version(home, text)
    if version.revocation is not None:
        raise Refused(f"{version.label} is still revoked here",
                      hint=f"imgtool version unrevoke {version.label} --reason TEXT --push {remote_name}")
    return _push_statement(home, version, remote_name, key_name, reason, at or now(), lift=True)


def _push_statement(home: Home, version: ImageVersion, remote_name: str, key_name: str | None, reason: str,
                    when: datetime, *, lift: bool) -> dict[str, Any]:
    with connected(home, remote_name) as (remote, target):
        repo = fmt.repository(remote.prefix, version.gallery, version.definition)
        try:
            fetched = target.get_manifest(repo, version.version)
        except NotFound:
            raise NotFound(f"{remote.name} has no {repo}:{version.version}",
                           hint="nothing to revoke there (push it first, if that was meant)") from None
        key = keyring(home).load(signing_key_for(home, remote.name, key_name))
        envelope = revocations.sign(key, _name(remote, repo, version.gallery, version.definition, version.version),
                                    fetched.digest, reason, revoked_at=when, lift=lift)
        subject = Descriptor(media.OCI_MANIFEST, fetched.digest, len(fetched.data))
        layer = Descriptor.of(revocations.REVOCATION_MEDIA_TYPE, envelope)
        manifest = referrers.referrer_manifest(subject, revocations.REVOCATION_MEDIA_TYPE, layer, {})
        referrers.attach(target, repo, manifest, envelope, artifact_type=revocations.REVOCATION_MEDIA_TYPE)
    return {**ref_fields(version.label), "remote": remote_name, "repository": repo, "manifest": fetched.digest,
            "key_id": key.public.key_id}


def signing_key_for(home: Home, remote_name: str, key_name: str | None = None) -> str:
    """The key that signs statements for `remote_name`: the one given, else the remote's signing key;
    Refused if none."""
    chosen = key_name or trust_store(home).remote(remote_name).signing_key
    if chosen is None:
        raise Refused(f"no key to sign the revocation for {remote_name} with",
                      hint=f"pass --sign KEY, or set one: imgtool trust signing-key {remote_name} KEY")
    return chosen


# -- finding and judging ---------------------------------------------------------------------------------


def statements(target: Target, repo: str, digest: str) -> list[bytes]:
    """The envelopes of the revocation referrers of `digest`, each checked for shape and digest."""
    found = []
    for referrer in referrers.find(target, repo, digest, artifact_type=revocations.REVOCATION_MEDIA_TYPE):
        layer = referrers.only_layer(referrer, media_type=revocations.REVOCATION_MEDIA_TYPE, limit=sig.MAX_ENVELOPE)
        envelope = referrers.read_blob(target, repo, layer)
        if envelope is not None:
            found.append(envelope)
    return found[:MAX_STATEMENTS]


@dataclass
class Finding:
    revoked: revocations.Revoked | None = None  # the revocation in force
    lifted: revocations.Revoked | None = None  # the lift in force (then revoked is None)
    ignored: list[str] = field(default_factory=list)  # statements that did not count, and why


def find(home: Home, remote: Remote, target: Target, repo: str, name: sig.SignedName,
         digests: list[str]) -> Finding:
    """The verified statement in force about `name` at any of `digests` (the latest; at the same second a
    revocation over a lift), and the statements that did not count."""
    keys = trust_store(home).remote(remote.name).keys
    finding = Finding()
    verified: list[revocations.Revoked] = []
    for digest in digests:
        for envelope in statements(target, repo, digest):
            verdict = revocations.judge(envelope, keys=keys, name=name, manifest_digest=digest, when=now())
            if isinstance(verdict, revocations.Revoked):
                verified.append(verdict)
            else:
                finding.ignored.append(verdict)
    decided = revocations.latest(verified)
    if decided is not None and decided.lifted:
        finding.lifted = decided
    else:
        finding.revoked = decided
    return finding


def refuse_if_revoked(home: Home, remote: Remote, target: Target, repo: str, digest: str,
                      version: ImageVersion) -> None:
    """Raise Refused when a trusted key revoked this version (the pull check; nothing is stored yet)."""
    found = find(home, remote, target, repo, _name(remote, repo, version.gallery, version.definition,
                                                   version.version), [digest])
    if found.revoked is None:
        return
    marked = mark_local_copies(home, remote.name, digest, found.revoked)
    also = f"; marked revoked here: {', '.join(marked)}" if marked else ""
    raise Refused(f"{remote.name}:{version.gallery}/{version.definition}@{version.version} is revoked: "
                  f"{found.revoked.reason} (since {found.revoked.revoked_at}, signed by "
                  f"{found.revoked.key_id[:19]}…){also}",
                  hint=f"nothing was pulled; pick another version: imgtool remote versions "
                       f"{remote.name}:{version.gallery}/{version.definition}")


def mark_local_copies(home: Home, remote_name: str, digest: str, revoked: revocations.Revoked) -> list[str]:
    """Mark revoked the local versions pulled from `remote_name` at manifest `digest` (not yet marked)."""
    marked = []
    for _key, record in home.store.list_names(VERSIONS):
        version = ImageVersion.from_json(home.store.get_manifest(record))
        origin = version.pulled_from
        if origin is None or origin.remote != remote_name or origin.manifest != digest:
            continue
        if version.revocation is None:
            update_version(home, version.label, revocation=Revocation(revoked.reason, revoked.revoked_at))
            marked.append(version.label)
    return marked


def revoked_tags(home: Home, remote: Remote, target: Target, repo: str,
                 tags: list[tuple[str, str, dict[str, str]]]) -> dict[str, str]:
    """tag -> reason for the listed (tag, manifest digest, annotations) that a trusted key revoked."""
    found: dict[str, str] = {}
    for tag, digest, notes in tags:
        gallery, definition = notes.get("org.imgtool.gallery"), notes.get("org.imgtool.definition")
        if not gallery or not definition:
            continue
        try:
            name = _name(remote, repo, gallery, definition, tag)
        except Exception:  # annotations a remote sent that make no valid name: nothing to verify against
            continue
        verdict = find(home, remote, target, repo, name, [digest]).revoked
        if verdict is not None:
            found[tag] = verdict.reason
    return found


# -- sync -------------------------------------------------------------------------------------------------


def sync(home: Home, remote_name: str) -> list[dict[str, Any]]:
    """Mark local copies of versions pulled from `remote_name` revoked where the remote revoked them."""
    results: list[dict[str, Any]] = []
    with connected(home, remote_name) as (remote, target):
        for _key, record in home.store.list_names(VERSIONS):
            version = ImageVersion.from_json(home.store.get_manifest(record))
            origin = version.pulled_from
            if origin is None or origin.remote != remote.name:
                continue
            result = _sync_one(home, remote, target, version, origin)
            if result is not None:
                results.append(result)
    return results


def _sync_one(home: Home, remote: Remote, target: Target, version: ImageVersion,
              origin: PulledFrom) -> dict[str, Any] | None:
    repo, tag, pulled = origin.repository, origin.tag, origin.manifest
    try:
        fetched = target.get_manifest(repo, pulled)
    except NotFound:
        return None  # gone from the remote: nothing can be verified against it
    notes = fmt.parse_manifest(fetched.data, fetched.digest, f"{remote.name}:{repo}@{pulled[:19]}").annotations
    digests = [pulled]
    with contextlib.suppress(NotFound):
        current = target.get_manifest(repo, tag).digest
        if current != pulled:
            digests.append(current)
    name = _name(remote, repo, notes.get("org.imgtool.gallery", version.gallery),
                 notes.get("org.imgtool.definition", version.definition), tag)
    found = find(home, remote, target, repo, name, digests)
    if found.lifted is not None:
        return _lift_one(home, version, found)
    if found.revoked is None:
        return {**ref_fields(version.label), "revoked": None, "ignored": found.ignored} if found.ignored else None
    if version.revocation is None:
        update_version(home, version.label, revocation=Revocation(found.revoked.reason, found.revoked.revoked_at))
    revoked = Revocation(found.revoked.reason, found.revoked.revoked_at).to_json()  # as vm list and vm show
    return {**ref_fields(version.label), "revoked": revoked,
            "key_id": found.revoked.key_id, "ignored": found.ignored,
            "vms": vmrecord.vms_using(home, version.gallery, version.definition, version.version)}


def _lift_one(home: Home, version: ImageVersion, found: Finding) -> dict[str, Any] | None:
    """A lift on the remote clears the local copy's revocation, unless it was revoked here after the lift
    (a later local decision stands)."""
    lifted = found.lifted
    assert lifted is not None
    local = version.revocation
    if local is None or local.when > lifted.revoked_at:
        return None
    update_version(home, version.label, revocation=None)
    return {**ref_fields(version.label), "revoked": None, "lifted": lifted.reason, "since": lifted.revoked_at,
            "key_id": lifted.key_id, "ignored": found.ignored,
            "vms": vmrecord.vms_using(home, version.gallery, version.definition, version.version)}
