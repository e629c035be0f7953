"""docs/STORE-FORMAT.md's remote half against the code: media types, manifest annotations, referrers.

The tables are parsed with the helpers of tests/test_store_format_doc.py; a media type or annotation
the code writes and the document omits (or the other way round) fails here, as the store half fails
against its frozen fixture.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

from imgtool.gallery.lifecycle_model import CheckResult, Revocation
from imgtool.gallery.model import Disk, ImageVersion
from imgtool.oci import media
from imgtool.oci.descriptor import EMPTY_DIGEST, Descriptor, sha256_of
from imgtool.oci.referrers import fallback_index, fallback_tag
from imgtool.remote import format as fmt
from imgtool.remote.push import manifest_annotations
from imgtool.trust import revocations
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing
from tests.test_store_format_doc import section, table

WHEN = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
SUBJECT = Descriptor(media.OCI_MANIFEST, "sha256:" + "ab" * 32, 1234)


def test_the_media_types_table_is_the_code() -> None:
    documented = {row[0]: row[1] for row in table("Media types")}
    written = {name: value for name, value in vars(media).items()
               if name.isupper() and isinstance(value, str) and value.startswith("application/")
               and not name.startswith("DOCKER_") and name != "MANIFEST_ACCEPT"}
    assert documented == written


def test_every_media_type_of_the_remote_modules_is_in_the_table() -> None:
    documented = {row[1] for row in table("Media types")}
    used = {fmt.VERSION_TYPE, fmt.CONFIG_TYPE, fmt.INDEX_TYPE, fmt.PACK_TYPE, sig.SIGNATURE_MEDIA_TYPE,
            sig.PAYLOAD_TYPE, revocations.REVOCATION_MEDIA_TYPE, revocations.PAYLOAD_TYPE}
    assert used <= documented


def _version() -> ImageVersion:
    """A version that sets every optional field an annotation reflects."""
    return ImageVersion("team", "base", "1.0.0", "generalized",
                        (Disk(None, "blake3:" + "1" * 64, 1 << 20, {"kind": "file"}),), "blake3:" + "0" * 64,
                        published="2026-12-01T09:00:00Z", end_of_life="2027-01-01",
                        check=CheckResult("failed", "console:READY", "2026-12-01T09:00:00Z"),
                        revocation=Revocation("CVE-2026-0001", "2026-12-02T09:00:00Z"))  # pushed --with-revocation


def test_every_annotation_a_push_writes_is_documented() -> None:
    rows = table("The manifest")
    documented = {key.strip().strip("`") for row in rows for key in row[0].split(",")}
    written = set(manifest_annotations(_version(), {"description": "a base image", "publisher": "acme"}))
    assert written == documented


def test_the_manifest_example_names_the_codes_types() -> None:
    text = section("The manifest")
    for value in (fmt.VERSION_TYPE, fmt.CONFIG_TYPE, fmt.INDEX_TYPE, fmt.PACK_TYPE, media.OCI_MANIFEST):
        assert value in text
    manifest = json.loads(fmt.manifest_bytes(Descriptor.of(fmt.CONFIG_TYPE, b"{}"), [], {}))
    assert sorted(manifest) == ["artifactType", "config", "layers", "mediaType", "schemaVersion"]


def test_a_signature_referrer_is_shaped_as_documented(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("me", at=WHEN)
    key = ring.load("me")
    name = sig.SignedName("reg.example:5000", "img/team/base", "team", "base", "1.0.0")
    envelope = sig.sign(key, name, SUBJECT.digest, signed_at=WHEN)
    manifest = json.loads(sig.referrer_manifest(envelope, SUBJECT, key_id=key.public.key_id, created=WHEN))
    assert sorted(manifest) == ["annotations", "artifactType", "config", "layers", "mediaType", "schemaVersion",
                                "subject"]
    assert manifest["config"] == {"digest": EMPTY_DIGEST, "mediaType": media.OCI_EMPTY, "size": 2}
    assert set(manifest["annotations"]) == {sig.KEY_ID_ANNOTATION, media.CREATED}
    doc = section("Referrers")
    assert sig.KEY_ID_ANNOTATION in doc and media.CREATED in doc and EMPTY_DIGEST[:15] in doc
    body = json.loads(envelope)
    assert sorted(body) == ["algorithm", "keyid", "payload", "payloadType", "sig"]
    envelopes = section("Signature and revocation envelopes")
    assert all(f'"{field}"' in envelopes for field in body)
    payload = json.loads(sig.open_envelope(envelope).payload)
    assert payload["critical"]["type"] in envelopes and "signed-at" in envelopes
    assert sorted(payload["critical"]["identity"]) == sorted(re.findall(r'"(\w+)": "', envelopes.split(
        '"identity": {', 1)[1].split("}", 1)[0]))
    assert revocations.REVOCATION_TYPE in envelopes
    assert revocations.LIFT_TYPE in envelopes and all(f'"{at}"' in envelopes for at in revocations.TIME_FIELD.values())


def test_the_fallback_tag_and_index_are_as_documented() -> None:
    assert fallback_tag(SUBJECT.digest) == "sha256-" + "ab" * 32
    index = json.loads(fallback_index(None, SUBJECT, artifact_type=media.SIGNATURE, what="i"))
    assert index["mediaType"] == media.OCI_INDEX
    assert sorted(index["manifests"][0]) == ["artifactType", "digest", "mediaType", "size"]
    assert "{mediaType, digest, size, artifactType}" in section("Referrers")
    assert sha256_of(b"{}") == EMPTY_DIGEST
