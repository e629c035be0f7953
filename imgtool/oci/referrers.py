"""Referrers: manifests that point at another through `subject` (signatures, revocations, SBOMs).

Written once, for every target (oras-go's registry/remote/referrers.go):
- finding: candidates come from the referrers API (where the registry has it) and the referrers tag
  schema (an index tagged `sha256-<hex>`), both: a registry upgraded to the API still holds what was
  pushed through the tag before. Index entries are only candidates (skopeo drops `artifactType` when it
  copies the index, anyone who can push can add entries), so every one not plainly of another type is
  fetched by digest, size capped and its sha256 re-checked here (the targets check too; these bytes
  decide trust). A candidate that names another subject is a lie about this one and refuses the
  lookup; one that is missing (deleted, gc'ed) or of another artifact type is skipped: skipping never
  accepts anything, the caller's policy still needs what it looks for.
- attaching: blobs, then the referrer manifest (by digest), then, without the API, the fallback index,
  so a tag never names a manifest whose blobs are missing. The index is read-modify-write and
  distribution has no If-Match: writers in this process are serialised per subject; two processes at
  once can lose an entry (the next attach re-adds its own).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from imgtool import strict
from imgtool.errors import Corrupt, InvalidArgument, NotFound
from imgtool.oci import media
from imgtool.oci.descriptor import EMPTY, EMPTY_DESCRIPTOR, Descriptor, index_bytes, manifest_bytes, sha256_of
from imgtool.oci.target import MAX_MANIFEST, Target, read_all

MAX_INDEX = MAX_MANIFEST  # the registry manifest limit
MAX_REFERRERS = 256  # candidates fetched per subject; more is a flood, refused
MAX_MANIFEST_OF_REFERRER = 64 * 1024  # real ones are under 1 KiB

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class Referrer:
    """One referrer manifest as found: its digest, its bytes (re-checked), and the object they hold."""

    digest: str
    manifest: bytes
    body: dict[str, Any]


def fallback_tag(subject_digest: str) -> str:
    """The referrers tag schema's tag for a subject: `sha256-<hex>`."""
    if not strict.SHA256.fullmatch(subject_digest):
        raise InvalidArgument(f"'{subject_digest}' is not a sha256 digest", hint="sha256:<64 hex digits>")
    return subject_digest.replace(":", "-", 1)


# -- finding --------------------------------------------------------------------------------------------------------

def candidates(index: bytes, *, what: str, artifact_type: str | None = None) -> list[Descriptor]:
    """The manifests a referrers index (API answer or fallback tag) lists, as candidates only.

    Entries that are not OCI manifests are dropped; so is an entry whose `artifactType` names another
    type than `artifact_type` (an absent one is kept: skopeo drops it).
    """
    seen: dict[str, Descriptor] = {}
    for entry in _index_entries(index, what=what):
        if entry.get("mediaType") != media.OCI_MANIFEST:
            continue  # an index or another format is nothing imgtool writes as a referrer
        if artifact_type is not None and entry.get("artifactType") not in (artifact_type, None):
            continue
        label = f"an entry of {what}"
        digest = strict.text(entry, "digest", what=label, pattern=strict.SHA256)
        size = strict.count(entry, "size", what=label, limit=MAX_MANIFEST_OF_REFERRER)
        seen.setdefault(digest, Descriptor(media.OCI_MANIFEST, digest, size))
    return list(seen.values())


def _index_entries(index: bytes, *, what: str) -> list[dict[str, Any]]:
    obj = strict.load_object(index, what=what, limit=MAX_INDEX)
    strict.equal(obj, "schemaVersion", 2, what=what)
    if obj.get("mediaType") not in (None, media.OCI_INDEX):
        raise strict.refuse(what, f"media type {str(obj.get('mediaType'))[:60]!r} is not an OCI index")
    entries = obj.get("manifests")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise strict.refuse(what, "manifests is not a list of descriptors")
    if len(entries) > MAX_REFERRERS:
        raise strict.refuse(what, f"it lists {len(entries)} referrers, above the limit of {MAX_REFERRERS}")
    return entries


def listed(target: Target, repo: str, subject: str, *, artifact_type: str | None = None) -> list[Descriptor]:
    """The candidates of the API and of the fallback tag together, each digest once; a flood is refused."""
    found: dict[str, Descriptor] = {}
    api = target.referrers_api(repo, subject)
    if api is not None:
        for d in candidates(api, what=f"the referrers of {subject[:19]}…", artifact_type=artifact_type):
            found.setdefault(d.digest, d)
    tag = fallback_tag(subject)
    try:
        tagged: bytes | None = target.get_manifest(repo, tag).data
    except NotFound:
        tagged = None
    if tagged is not None:
        for d in candidates(tagged, what=f"the referrers tag {tag[:19]}…", artifact_type=artifact_type):
            found.setdefault(d.digest, d)
    if len(found) > MAX_REFERRERS:
        raise Corrupt(f"{target.label}: {len(found)} referrers for one manifest",
                      hint="nothing was used; the repository's referrers were flooded: tell its owner")
    return list(found.values())


def find(target: Target, repo: str, subject: str, *, artifact_type: str) -> list[Referrer]:
    """Every referrer of `subject` whose manifest says `artifact_type`, each checked: Corrupt when the
    registry lies (other bytes, another subject); trusting what they carry is the caller's job."""
    found = []
    for descriptor in listed(target, repo, subject, artifact_type=artifact_type):
        referrer = _fetch(target, repo, subject, descriptor.digest)
        if referrer is not None and referrer.body.get("artifactType") == artifact_type:
            found.append(referrer)
    return found


def _fetch(target: Target, repo: str, subject: str, digest: str) -> Referrer | None:
    what = f"referrer {digest[:19]}…"
    try:
        data = target.get_manifest(repo, digest).data
    except NotFound:
        return None
    if sha256_of(data) != digest:
        raise Corrupt(f"{target.label} sent other bytes for the manifest {digest[:19]}…",
                      hint="nothing was used; the registry or something between is corrupting data")
    body = strict.load_object(data, what=what, limit=MAX_MANIFEST_OF_REFERRER)
    strict.equal(body, "schemaVersion", 2, what=what)
    named = strict.text(strict.child(body, "subject", what=what), "digest", what=f"the subject of {what}",
                        pattern=strict.SHA256)
    if named != subject:
        raise Corrupt(f"{what} is listed as a referrer of {subject[:19]}… but refers to {named[:19]}…",
                      hint="the registry's referrers answer is wrong or tampered with; nothing was used")
    return Referrer(digest, data, body)


def only_layer(referrer: Referrer, *, media_type: str, limit: int) -> Descriptor:
    """The one layer of an imgtool referrer, of `media_type` and at most `limit` bytes; Corrupt otherwise."""
    what = f"referrer {referrer.digest[:19]}…"
    layers = referrer.body.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise strict.refuse(what, "an imgtool referrer has exactly one layer")
    layer = layers[0]
    strict.equal(layer, "mediaType", media_type, what=f"the layer of {what}")
    digest = strict.text(layer, "digest", what=f"the layer of {what}", pattern=strict.SHA256)
    return Descriptor(media_type, digest, strict.count(layer, "size", what=f"the layer of {what}", limit=limit))


def read_blob(target: Target, repo: str, layer: Descriptor) -> bytes | None:
    """A referrer's blob (None when it is gone), its size and sha256 re-checked."""
    try:
        data = read_all(target.get_blob(repo, layer.digest, size=layer.size))
    except NotFound:
        return None
    if len(data) != layer.size:
        raise Corrupt(f"{target.label}: the blob {layer.digest[:19]}… is {len(data)} bytes, its manifest says "
                      f"{layer.size}", hint="nothing was used; tell the registry's owner")
    if sha256_of(data) != layer.digest:
        raise Corrupt(f"{target.label} sent other bytes for the blob {layer.digest[:19]}…",
                      hint="nothing was used; the registry or something between is corrupting data")
    return data


# -- attaching ------------------------------------------------------------------------------------------------------

def referrer_manifest(subject: Descriptor, artifact_type: str, layer: Descriptor,
                      annotations: dict[str, str]) -> bytes:
    """The manifest of an artifact with the empty config and one layer, referring to `subject`."""
    return manifest_bytes(EMPTY_DESCRIPTOR, [layer], annotations, artifact_type=artifact_type, subject=subject)


def attach(target: Target, repo: str, manifest: bytes, blob: bytes, *, artifact_type: str) -> Descriptor:
    """Put a referrer (made by `referrer_manifest`, or copied byte for byte) and make it findable.

    Idempotent; the subject manifest must already be there. Returns the referrer's descriptor.
    """
    subject = strict.text(strict.child(strict.load_object(manifest, what="a referrer", limit=MAX_MANIFEST_OF_REFERRER),
                                       "subject", what="a referrer"), "digest", what="a referrer",
                          pattern=strict.SHA256)
    for digest, data in ((EMPTY_DESCRIPTOR.digest, EMPTY), (sha256_of(blob), blob)):
        if target.blob_size(repo, digest) is None:
            target.put_blob(repo, digest, data)
    digest = target.put_manifest(repo, sha256_of(manifest), manifest, media.OCI_MANIFEST)
    found = Descriptor(media.OCI_MANIFEST, digest, len(manifest))
    if not target.supports_referrers_api(repo):
        _add_to_fallback(target, repo, subject, found, artifact_type)
    return found


def _add_to_fallback(target: Target, repo: str, subject: str, entry: Descriptor, artifact_type: str) -> None:
    tag = fallback_tag(subject)
    with _lock(f"{target.label}/{repo}/{subject}"):
        try:
            existing: bytes | None = target.get_manifest(repo, tag).data
        except NotFound:
            existing = None
        index = fallback_index(existing, entry, artifact_type=artifact_type, what=f"the referrers tag {tag[:19]}…")
        if index != existing:
            target.put_manifest(repo, tag, index, media.OCI_INDEX)


def fallback_index(existing: bytes | None, referrer: Descriptor, *, artifact_type: str, what: str) -> bytes:
    """The referrers-tag-schema index with `referrer` added once; entries already there are kept as they
    are (they may be another tool's referrers)."""
    entries = [] if existing is None else _index_entries(existing, what=what)
    if not any(e.get("digest") == referrer.digest for e in entries):
        entries.append({**referrer.to_json(), "artifactType": artifact_type})
    return index_bytes(entries)


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())
