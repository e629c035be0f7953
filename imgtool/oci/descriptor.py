"""Descriptors, digests and the canonical bytes of OCI documents imgtool writes.

Pure module. One `Descriptor` for every blob and manifest imgtool names; one sha256 helper; canonical
JSON in the two spellings the frozen formats already use (see `canonical` and `canonical_ascii`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from imgtool.errors import Corrupt
from imgtool.oci import media
from imgtool.strict import SHA256

EMPTY = b"{}"  # the OCI empty descriptor's content
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def sha256_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(text: object, what: str) -> str:
    """`text` when it is a sha256 digest (and so safe to put in a path or URL); Corrupt otherwise."""
    if not isinstance(text, str) or not SHA256.fullmatch(text):
        raise Corrupt(f"{what} names {str(text)[:80]!r}, which is not a sha256 digest",
                      hint="the remote's content is not usable; ask its publisher to push it again")
    return text


def canonical(obj: object) -> bytes:
    """Sorted keys, no spaces, UTF-8: signed payloads, envelopes, referrer manifests and indexes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def canonical_ascii(obj: object) -> bytes:
    """As `canonical` but with non-ASCII escaped: the spelling of version manifests and configs since
    format 1, kept so that a version pushed again gets the manifest digest it already has."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            body["annotations"] = dict(self.annotations)
        return body

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Descriptor:
        return cls(media_type, sha256_of(data), len(data))

    @classmethod
    def from_json(cls, obj: object, what: str) -> Descriptor:
        if not isinstance(obj, dict):
            raise Corrupt(f"{what} is not a descriptor", hint="the remote version is malformed")
        size = obj.get("size")
        media_type = obj.get("mediaType")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or not isinstance(media_type, str):
            raise Corrupt(f"{what} has no valid size or media type", hint="the remote version is malformed")
        notes = obj.get("annotations") or {}
        if not isinstance(notes, dict):
            raise Corrupt(f"{what} has malformed annotations", hint="the remote version is malformed")
        return cls(media_type, check_digest(obj.get("digest"), what), size,
                   tuple(sorted((str(k), str(v)) for k, v in notes.items())))


EMPTY_DESCRIPTOR = Descriptor(media.OCI_EMPTY, EMPTY_DIGEST, len(EMPTY))


def manifest_bytes(config: Descriptor, layers: list[Descriptor], annotations: dict[str, str], *,
                   artifact_type: str, subject: Descriptor | None = None) -> bytes:
    """An OCI 1.1 image manifest, deterministic: the same content gives the same manifest digest."""
    body: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": artifact_type,
        "config": config.to_json(), "layers": [d.to_json() for d in layers],
    }
    if annotations:
        body["annotations"] = annotations
    if subject is not None:
        body["subject"] = subject.to_json()
    return canonical_ascii(body)


def index_bytes(manifests: list[dict[str, Any]]) -> bytes:
    """An OCI image index listing `manifests` (descriptors as JSON objects, kept as given)."""
    return canonical({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": manifests})
