"""Finding, attaching and copying a version's signatures on a registry (OCI referrers).

The registry client is passed in (the `RegistryReader` / `RegistryWriter` protocols), so this
module holds only the rules:
- candidates come from the referrers API (`GET /v2/<repo>/referrers/<digest>`) and the
  referrers tag schema (`<repo>:sha256-<hex>`), both consulted: a registry upgraded to the API
  still holds the signatures pushed through the tag before;
- every candidate manifest and envelope is fetched by digest, size capped, and its sha256
  re-checked here even if the client checks too (defence in depth: these bytes decide trust);
- a candidate that names another subject is a lie about this version and refuses the lookup;
  one that is missing (deleted, gc'ed) or of another artifact type is skipped: skipping never
  accepts anything, the policy still needs a valid signature;
- attaching pushes envelope -> empty config -> referrer manifest (by digest) -> fallback index,
  so a tag never names a manifest whose blobs are missing; the fallback index is
  read-modify-write (distribution has no If-Match: serialise writers of one version).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from imgtool.errors import Corrupt
from imgtool.trust import signatures as sig
from imgtool.trust import strict


class RegistryReader(Protocol):
    def get_manifest(self, repository: str, reference: str, *, limit: int) -> bytes | None:
        """The manifest bytes, None on 404; refuses (raises) an answer above `limit` bytes."""

    def get_blob(self, repository: str, digest: str, *, limit: int) -> bytes | None:
        """The blob bytes, None on 404; refuses (raises) an answer above `limit` bytes."""

    def get_referrers(self, repository: str, digest: str, *, limit: int) -> bytes | None:
        """The referrers API's index, or None when the registry has no referrers API."""


class RegistryWriter(RegistryReader, Protocol):
    def put_blob(self, repository: str, data: bytes) -> None: ...

    def put_manifest(self, repository: str, reference: str, data: bytes, *, media_type: str) -> None: ...


@dataclass(frozen=True)
class Attached:
    """One signature as found on a registry: its referrer manifest and its envelope."""

    manifest_digest: str
    manifest: bytes
    envelope: bytes


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _checked(data: bytes | None, digest: str, what: str) -> bytes | None:
    if data is not None and sha256(data) != digest:
        raise Corrupt(f"the registry sent other bytes for {what} {digest[:19]}…",
                      hint="nothing was used; the registry or something between is corrupting data")
    return data


def find(reader: RegistryReader, repository: str, subject_digest: str) -> list[Attached]:
    """Every imgtool signature attached to `subject_digest` in `repository`, checked for shape only.

    Raises Corrupt when the registry lies about what refers to the version or
    sends bytes that do not match their digest; trust is the policy's job.
    """
    candidates: dict[str, sig.Descriptor] = {}
    api = reader.get_referrers(repository, subject_digest, limit=sig.MAX_REFERRERS_INDEX)
    if api is not None:
        for d in sig.referrer_candidates(api, what=f"the referrers of {subject_digest[:19]}…"):
            candidates.setdefault(d.digest, d)
    tagged = reader.get_manifest(repository, sig.fallback_tag(subject_digest), limit=sig.MAX_REFERRERS_INDEX)
    if tagged is not None:
        for d in sig.referrer_candidates(tagged, what=f"the referrers tag {sig.fallback_tag(subject_digest)[:19]}…"):
            candidates.setdefault(d.digest, d)
    if len(candidates) > sig.MAX_REFERRERS:
        raise Corrupt(f"the registry lists {len(candidates)} referrers for one version",
                      hint="nothing was used; the repository's referrers were flooded: tell its owner")
    found = []
    for descriptor in candidates.values():
        attached = _fetch(reader, repository, subject_digest, descriptor)
        if attached is not None:
            found.append(attached)
    return found


def _fetch(reader: RegistryReader, repository: str, subject: str, descriptor: sig.Descriptor) -> Attached | None:
    what = f"referrer {descriptor.digest[:19]}…"
    manifest = _checked(reader.get_manifest(repository, descriptor.digest, limit=sig.MAX_REFERRER_MANIFEST),
                        descriptor.digest, "the manifest")
    if manifest is None:
        return None
    layer = sig.signature_layer(manifest, subject_digest=subject, what=what)
    if layer is None:
        return None
    envelope = _checked(reader.get_blob(repository, layer.digest, limit=sig.MAX_ENVELOPE), layer.digest,
                        "the signature")
    if envelope is None:
        return None
    if len(envelope) != layer.size:
        raise Corrupt(f"{what}: the signature is {len(envelope)} bytes, its manifest says {layer.size}",
                      hint="nothing was used; tell the registry's owner")
    return Attached(descriptor.digest, manifest, envelope)


def attach(writer: RegistryWriter, repository: str, attached: Attached) -> None:
    """Put one signature (as made by `signatures.referrer_manifest`, or copied) on `repository`.

    Idempotent. The subject manifest must already be there.
    """
    subject = _subject_of(attached.manifest)
    writer.put_blob(repository, attached.envelope)
    writer.put_blob(repository, b"{}")
    writer.put_manifest(repository, attached.manifest_digest, attached.manifest, media_type=sig.OCI_MANIFEST)
    tag = sig.fallback_tag(subject)
    existing = writer.get_manifest(repository, tag, limit=sig.MAX_REFERRERS_INDEX)
    descriptor = sig.Descriptor(sig.OCI_MANIFEST, attached.manifest_digest, len(attached.manifest))
    index = sig.fallback_index(existing, descriptor, what=f"the referrers tag {tag[:19]}…")
    if index != existing:
        writer.put_manifest(repository, tag, index, media_type=sig.OCI_INDEX)


def copy_all(reader: RegistryReader, source_repository: str, writer: RegistryWriter, target_repository: str,
             subject_digest: str) -> int:
    """Copy every imgtool signature of a version (byte for byte: same digests) to another repository."""
    found = find(reader, source_repository, subject_digest)
    for attached in found:
        attach(writer, target_repository, attached)
    return len(found)


def make(envelope: bytes, subject: sig.Descriptor, *, key_id: str, created: datetime) -> Attached:
    manifest = sig.referrer_manifest(envelope, subject, key_id=key_id, created=created)
    return Attached(sha256(manifest), manifest, envelope)


def _subject_of(manifest: bytes) -> str:
    obj = strict.load_object(manifest, what="a signature manifest", limit=sig.MAX_REFERRER_MANIFEST)
    subject = strict.child(obj, "subject", what="a signature manifest")
    return strict.text(subject, "digest", what="a signature manifest", pattern=strict.SHA256)
