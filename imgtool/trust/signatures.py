"""Signatures over a version's content and name, and how they sit on a registry.

Pure module (no I/O). Three documents, each read back strictly:

1. The **payload** (canonical JSON: sorted keys, no spaces, UTF-8), shaped like
   cosign's "simple signing" payload so its meaning is familiar::

     {"critical": {"identity": {"registry": "reg.example:5000", "repository": "img/team/base",
                                "gallery": "team", "definition": "base", "version": "1.0.0"},
                   "image": {"manifest-digest": "sha256:…"},
                   "type": "imgtool version signature v1"},
      "optional": {"signed-at": "2026-12-01T09:00:00Z"}}

   The manifest digest covers the config (version and definition records) and
   every blob, so it binds the content; the identity binds the name, so a
   validly signed version served under another repository, tag or gallery is
   refused. cosign puts only `docker-reference` in the identity; imgtool also
   names gallery/definition/version because a repository can be re-mapped.

2. The **envelope** (media type application/vnd.imgtool.signature.v1+json)::

     {"payloadType": "application/vnd.imgtool.signature-payload.v1+json",
      "payload": BASE64, "keyid": "sha256:…", "algorithm": "ed25519", "sig": BASE64}

   The signature is ed25519 over DSSE's pre-authentication encoding
   `DSSEv1 <len> <payloadType> <len> <payload>` (the in-toto/sigstore envelope
   rule), so the bytes signed can never be confused with another document
   type. Unlike DSSE it holds exactly one signature (one signer = one referrer,
   as the Notary Project does it), and it names the algorithm so that a
   verifier refuses anything but ed25519 before it looks further.

3. The **referrer manifest**: an OCI 1.1 image manifest with `artifactType` =
   the envelope media type, the empty config, one layer (the envelope) and
   `subject` = the version manifest. It is found through the referrers API or,
   where a registry has none (distribution 2.8, GHCR), the referrers tag schema
   (an index tagged `sha256-<hex>`). skopeo rewrites that index without the
   descriptors' `artifactType`, and anyone who can push can add entries, so
   index entries are only *candidates*: every one is fetched by digest and
   checked (subject, artifact type, layer) before its envelope is even parsed.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imgtool import strict
from imgtool.clock import parse_time, stamp
from imgtool.errors import Corrupt, InvalidArgument
from imgtool.names import REPOSITORY_PATH, Version, check_name
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor, canonical
from imgtool.oci.referrers import MAX_MANIFEST_OF_REFERRER
from imgtool.oci.referrers import referrer_manifest as referrer_manifest_of
from imgtool.trust.keys import ALGORITHM, KEY_ID, SigningKey

SIGNATURE_MEDIA_TYPE = media.SIGNATURE
PAYLOAD_TYPE = media.SIGNATURE_PAYLOAD
SIGNATURE_TYPE = "imgtool version signature v1"
KEY_ID_ANNOTATION = "dev.imgtool.signature.key-id"

# Limits for what a remote may send; real documents are far smaller.
MAX_ENVELOPE = 64 * 1024
MAX_PAYLOAD = 16 * 1024

_REGISTRY = re.compile(r"^[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


@dataclass(frozen=True)
class SignedName:
    """Where and as what a version is published: the name a signature binds."""

    registry: str
    repository: str
    gallery: str
    definition: str
    version: str

    def __post_init__(self) -> None:
        if not _REGISTRY.fullmatch(self.registry) or not REPOSITORY_PATH.fullmatch(self.repository):
            raise InvalidArgument(f"'{self.registry}/{self.repository}' is not a registry repository",
                                  hint="a lower-case host[:port] and repository path")
        check_name(self.gallery, "gallery")
        check_name(self.definition, "definition")
        Version.parse(self.version)

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.version} ({self.gallery}/{self.definition}@{self.version})"

    def as_json(self) -> dict[str, str]:
        return {"registry": self.registry, "repository": self.repository, "gallery": self.gallery,
                "definition": self.definition, "version": self.version}


@dataclass(frozen=True)
class Claim:
    """What a payload states: this manifest digest is this name."""

    name: SignedName
    manifest_digest: str
    signed_at: datetime | None


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    key_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return pae(PAYLOAD_TYPE, self.payload)


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


# -- making ---------------------------------------------------------------------------------------------------------

def payload_for(name: SignedName, manifest_digest: str, *, signed_at: datetime) -> bytes:
    if not strict.SHA256.fullmatch(manifest_digest):
        raise InvalidArgument(f"'{manifest_digest}' is not a sha256 manifest digest", hint="sha256:<64 hex digits>")
    return canonical({"critical": {"identity": name.as_json(), "image": {"manifest-digest": manifest_digest},
                                   "type": SIGNATURE_TYPE},
                      "optional": {"signed-at": stamp(signed_at)}})


def sign(key: SigningKey, name: SignedName, manifest_digest: str, *, signed_at: datetime) -> bytes:
    """The envelope bytes (a blob) signing `manifest_digest` as `name` with `key`."""
    if key.public.expires is not None and key.public.expires <= signed_at:
        raise InvalidArgument(f"signing key {key.name} expired on {stamp(key.public.expires)}",
                              hint="imgtool key generate a new key, and give its public key to your users")
    payload = payload_for(name, manifest_digest, signed_at=signed_at)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return canonical({"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                      "keyid": key.public.key_id, "algorithm": ALGORITHM,
                      "sig": base64.b64encode(signature).decode()})


def referrer_manifest(envelope: bytes, subject: Descriptor, *, key_id: str, created: datetime) -> bytes:
    """The OCI manifest that attaches `envelope` (pushed as a blob) to the version manifest `subject`."""
    layer = Descriptor.of(SIGNATURE_MEDIA_TYPE, envelope)
    return referrer_manifest_of(subject, SIGNATURE_MEDIA_TYPE, layer,
                                {KEY_ID_ANNOTATION: key_id, media.CREATED: stamp(created)})


# -- reading what a remote sent -------------------------------------------------------------------------------------

def signature_layer(manifest: bytes, *, subject_digest: str, what: str) -> Descriptor | None:
    """The envelope descriptor of a referrer manifest, or None when it is another kind of referrer.

    A referrer whose `subject` is another manifest is refused: the index that
    listed it lied about what refers to this version.
    """
    obj = strict.load_object(manifest, what=what, limit=MAX_MANIFEST_OF_REFERRER)
    strict.equal(obj, "schemaVersion", 2, what=what)
    subject = strict.child(obj, "subject", what=what)
    if strict.text(subject, "digest", what=f"the subject of {what}", pattern=strict.SHA256) != subject_digest:
        raise Corrupt(f"{what} is listed as a referrer of {subject_digest[:19]}… but refers to "
                      f"{str(subject.get('digest'))[:19]}…",
                      hint="the registry's referrers answer is wrong or tampered with; nothing was used")
    if obj.get("artifactType") != SIGNATURE_MEDIA_TYPE:
        return None  # someone else's referrer (an SBOM, a cosign signature): not ours to judge
    strict.exact(obj, what=what, required={"schemaVersion", "mediaType", "artifactType", "config", "layers",
                                            "subject"}, optional=frozenset({"annotations"}))
    strict.equal(obj, "mediaType", media.OCI_MANIFEST, what=what)
    layers = obj.get("layers")
    if not isinstance(layers, list) or len(layers) != 1 or not isinstance(layers[0], dict):
        raise strict.refuse(what, "a signature manifest must have exactly one layer")
    layer = layers[0]
    strict.equal(layer, "mediaType", SIGNATURE_MEDIA_TYPE, what=f"the layer of {what}")
    digest = strict.text(layer, "digest", what=f"the layer of {what}", pattern=strict.SHA256)
    return Descriptor(SIGNATURE_MEDIA_TYPE, digest, strict.count(layer, "size", what=what, limit=MAX_ENVELOPE))


def open_envelope(data: bytes, *, what: str = "a signature envelope") -> Envelope:
    obj = strict.load_object(data, what=what, limit=MAX_ENVELOPE)
    strict.exact(obj, what=what, required={"payloadType", "payload", "keyid", "algorithm", "sig"})
    strict.equal(obj, "payloadType", PAYLOAD_TYPE, what=what)
    if obj.get("algorithm") != ALGORITHM:
        raise strict.refuse(what, f"algorithm {str(obj.get('algorithm'))[:40]!r}; imgtool accepts ed25519 only")
    payload = strict.b64(obj, "payload", what=what, limit=MAX_PAYLOAD)
    signature = strict.b64(obj, "sig", what=what, limit=64)
    if len(signature) != 64:
        raise strict.refuse(what, "an ed25519 signature is 64 bytes")
    return Envelope(payload, strict.text(obj, "keyid", what=what, pattern=KEY_ID), signature)


@dataclass(frozen=True)
class Statement:
    """A canonical signed statement about a named version, its common part checked (signatures and
    revocations share it): the name, the manifest digest, and the fields particular to its kind."""

    name: SignedName
    manifest_digest: str
    critical: dict[str, Any]
    optional: dict[str, Any]


def read_statement(payload: bytes, *, what: str, kind: str, critical: frozenset[str] = frozenset(),
                   optional: frozenset[str] = frozenset(), optional_may: frozenset[str] = frozenset()) -> Statement:
    """Parse a statement of type `kind` strictly: canonical JSON, exactly the identity and image fields,
    plus the `critical` and `optional` fields its kind requires (and `optional_may` it allows)."""
    obj = strict.load_object(payload, what=what, limit=MAX_PAYLOAD)
    if canonical(obj) != payload:
        raise strict.refuse(what, "not canonical JSON")
    strict.exact(obj, what=what, required={"critical", "optional"})
    crit = strict.child(obj, "critical", what=what)
    strict.exact(crit, what=what, required={"identity", "image", "type"} | critical)
    strict.equal(crit, "type", kind, what=what)
    identity = strict.child(crit, "identity", what=what)
    strict.exact(identity, what=what, required={"registry", "repository", "gallery", "definition", "version"})
    image = strict.child(crit, "image", what=what)
    strict.exact(image, what=what, required={"manifest-digest"})
    opt = strict.child(obj, "optional", what=what)
    strict.exact(opt, what=what, required=set(optional), optional=optional_may)
    try:
        name = SignedName(**{k: strict.text(identity, k, what=what) for k in identity})
    except InvalidArgument as exc:
        raise strict.refuse(what, exc.message) from exc
    return Statement(name, strict.text(image, "manifest-digest", what=what, pattern=strict.SHA256), crit, opt)


def read_claim(payload: bytes, *, what: str = "a signature payload") -> Claim:
    """The payload's statement; it must be canonical so that one claim has one encoding."""
    found = read_statement(payload, what=what, kind=SIGNATURE_TYPE, optional_may=frozenset({"signed-at"}))
    optional = found.optional
    stamp = strict.text(optional, "signed-at", what=what, pattern=_STAMP) if "signed-at" in optional else None
    try:
        signed_at = parse_time(stamp, "signed-at") if stamp else None
    except InvalidArgument as exc:
        raise strict.refuse(what, exc.message) from exc
    return Claim(found.name, found.manifest_digest, signed_at)
