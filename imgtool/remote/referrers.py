"""Referrers: manifests that point at a version's manifest through `subject` (signatures, SBOMs).

`put_referrer` uploads one artifact that refers to a subject and makes it findable: registries with
the referrers API index it themselves (they answer the manifest PUT with `OCI-Subject`); for the
others (distribution 2.8, GHCR, layout folders) the referrers tag schema is kept: an image index
tagged `sha256-<hex of the subject>` listing the referrers, updated read-modify-write. There is no
If-Match on distribution, so writers in this process are serialised per repository; two processes
updating the same subject's index at once can lose an entry (the next put_referrer re-adds its own).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from imgtool.errors import Corrupt
from imgtool.remote.format import Descriptor, manifest_bytes
from imgtool.remote.registry import OCI_INDEX, fallback_tag
from imgtool.remote.target import Target, sha256_of

EMPTY_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY = b"{}"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def put_referrer(target: Target, repo: str, subject: Descriptor, artifact_type: str, blob: bytes, *,
                 blob_type: str = "application/octet-stream",
                 annotations: dict[str, str] | None = None) -> Descriptor:
    """Push `blob` as an artifact referring to `subject`; returns the referrer manifest's descriptor."""
    empty = Descriptor.of(EMPTY_TYPE, EMPTY)
    layer = Descriptor.of(blob_type, blob)
    for descriptor, data in ((empty, EMPTY), (layer, blob)):
        if target.blob_size(repo, descriptor.digest) is None:
            target.put_blob(repo, descriptor.digest, data)
    data = manifest_bytes(empty, [layer], annotations or {}, subject=subject, artifact_type=artifact_type)
    digest = target.put_manifest(repo, sha256_of(data), data, "application/vnd.oci.image.manifest.v1+json")
    found = Descriptor("application/vnd.oci.image.manifest.v1+json", digest, len(data),
                       tuple(sorted((annotations or {}).items())))
    if not target.supports_referrers_api(repo):
        _add_to_fallback(target, repo, subject.digest, found, artifact_type)
    return found


def _add_to_fallback(target: Target, repo: str, subject: str, entry: Descriptor, artifact_type: str) -> None:
    with _lock(f"{target.label}/{repo}/{subject}"):
        manifests = list(target.referrers(repo, subject))
        if any(m.get("digest") == entry.digest for m in manifests):
            return
        manifests.append({**entry.to_json(), "artifactType": artifact_type})
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        data = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        target.put_manifest(repo, fallback_tag(subject), data, OCI_INDEX)


def list_referrers(target: Target, repo: str, digest: str, *, artifact_type: str | None = None) -> list[Descriptor]:
    """The referrers of `digest`, optionally of one artifact type. A fallback index can be rewritten by
    third parties (skopeo drops artifactType), so callers verify what each referrer really is."""
    found: list[Descriptor] = []
    for raw in target.referrers(repo, digest):
        if artifact_type is not None and raw.get("artifactType") not in (artifact_type, None):
            continue
        try:
            found.append(Descriptor.from_json(raw, f"a referrer of {digest[:19]}…"))
        except Corrupt:
            continue  # an entry we cannot use is not a referrer we can verify
    return found


def subject_of(data: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    subject = body.get("subject") if isinstance(body, dict) else None
    return subject if isinstance(subject, dict) else None
