"""Finding, attaching and copying a version's signatures on a target (registry or layout).

The referrers themselves (candidates from the API and the fallback tag, digests re-checked, a lying
subject refused, the fallback index kept) are imgtool.oci.referrers'; this module adds what makes a
referrer an imgtool signature: its manifest's exact shape, and one envelope of a capped size.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from imgtool.errors import Corrupt
from imgtool.oci import referrers
from imgtool.oci.descriptor import Descriptor, sha256_of
from imgtool.oci.target import Target
from imgtool.trust import signatures as sig


@dataclass(frozen=True)
class Attached:
    """One signature as found on a registry: its referrer manifest and its envelope."""

    manifest_digest: str
    manifest: bytes
    envelope: bytes


def find(target: Target, repository: str, subject_digest: str) -> list[Attached]:
    """Every imgtool signature attached to `subject_digest` in `repository`, checked for shape only.

    Raises Corrupt when the registry lies about what refers to the version or
    sends bytes that do not match their digest; trust is the policy's job.
    """
    found = []
    for referrer in referrers.find(target, repository, subject_digest, artifact_type=sig.SIGNATURE_MEDIA_TYPE):
        what = f"referrer {referrer.digest[:19]}…"
        layer = sig.signature_layer(referrer.manifest, subject_digest=subject_digest, what=what)
        if layer is None:
            continue
        envelope = referrers.read_blob(target, repository, layer)
        if envelope is None:
            continue  # gone (deleted, gc'ed): skipping never accepts anything
        found.append(Attached(referrer.digest, referrer.manifest, envelope))
    return found


def attach(target: Target, repository: str, attached: Attached) -> None:
    """Put one signature (as made by `make`, or copied) on `repository`. Idempotent; the subject
    manifest must already be there."""
    if sha256_of(attached.manifest) != attached.manifest_digest:
        raise Corrupt(f"signature manifest {attached.manifest_digest[:19]}… does not hash to its digest",
                      hint="nothing was pushed; run imgtool verify")
    referrers.attach(target, repository, attached.manifest, attached.envelope,
                     artifact_type=sig.SIGNATURE_MEDIA_TYPE)


def copy_all(source: Target, source_repository: str, target: Target, target_repository: str,
             subject_digest: str) -> int:
    """Copy every imgtool signature of a version (byte for byte: same digests) to another repository."""
    found = find(source, source_repository, subject_digest)
    for attached in found:
        attach(target, target_repository, attached)
    return len(found)


def make(envelope: bytes, subject: Descriptor, *, key_id: str, created: datetime) -> Attached:
    manifest = sig.referrer_manifest(envelope, subject, key_id=key_id, created=created)
    return Attached(sha256_of(manifest), manifest, envelope)
