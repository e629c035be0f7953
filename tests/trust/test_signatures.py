"""Signatures: the payload binds digest and name, envelopes and referrers are read strictly."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, InvalidArgument
from imgtool.oci import media
from imgtool.oci import referrers as oci_referrers
from imgtool.oci.descriptor import EMPTY_DIGEST, Descriptor, canonical
from imgtool.remote import format as fmt
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing, SigningKey
from tests.trust.samples import DIGEST, NAME, WHEN


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("release")
    return ring.load("release")


def test_envelope_round_trip_and_what_is_signed(key: SigningKey) -> None:
    data = sig.sign(key, NAME, DIGEST, signed_at=WHEN)
    envelope = sig.open_envelope(data)
    assert envelope.key_id == key.public.key_id
    assert key.public.verify(envelope.signature, envelope.signed_bytes())
    assert not key.public.verify(envelope.signature, envelope.payload)  # the PAE, not the bare payload
    claim = sig.read_claim(envelope.payload)
    assert claim == sig.Claim(NAME, DIGEST, WHEN)
    payload = json.loads(envelope.payload)
    assert payload["critical"]["identity"] == {"registry": "127.0.0.1:5000", "repository": "img/team/base",
                                               "gallery": "team", "definition": "base", "version": "1.0.0"}
    assert payload["critical"]["image"] == {"manifest-digest": DIGEST}


def test_pae_is_dsse() -> None:
    assert sig.pae("t", b"hello") == b"DSSEv1 1 t 5 hello"


def test_referrer_manifest_names_subject_and_envelope(key: SigningKey) -> None:
    envelope = sig.sign(key, NAME, DIGEST, signed_at=WHEN)
    subject = Descriptor(media.OCI_MANIFEST, DIGEST, 1234)
    manifest = sig.referrer_manifest(envelope, subject, key_id=key.public.key_id, created=WHEN)
    obj = json.loads(manifest)
    assert obj["artifactType"] == sig.SIGNATURE_MEDIA_TYPE
    assert obj["subject"] == {"mediaType": media.OCI_MANIFEST, "digest": DIGEST, "size": 1234}
    assert obj["config"]["digest"] == EMPTY_DIGEST
    layer = sig.signature_layer(manifest, subject_digest=DIGEST, what="m")
    assert layer == Descriptor(sig.SIGNATURE_MEDIA_TYPE, "sha256:" + hashlib.sha256(envelope).hexdigest(),
                                   len(envelope))


def test_a_referrer_of_another_manifest_is_refused(key: SigningKey) -> None:
    envelope = sig.sign(key, NAME, DIGEST, signed_at=WHEN)
    other = Descriptor(media.OCI_MANIFEST, "sha256:" + "cd" * 32, 10)
    manifest = sig.referrer_manifest(envelope, other, key_id=key.public.key_id, created=WHEN)
    with pytest.raises(Corrupt, match="refers to"):
        sig.signature_layer(manifest, subject_digest=DIGEST, what="m")


def test_someone_elses_referrer_is_skipped_not_judged() -> None:
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media.OCI_MANIFEST, "artifactType": "application/x-sbom",
                           "subject": {"mediaType": media.OCI_MANIFEST, "digest": DIGEST, "size": 1},
                           "layers": []}).encode()
    assert sig.signature_layer(manifest, subject_digest=DIGEST, what="m") is None


def test_fallback_index_keeps_others_and_adds_once() -> None:
    first = Descriptor(media.OCI_MANIFEST, "sha256:" + "01" * 32, 100)
    foreign = {"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "02" * 32, "size": 5, "artifactType": "x/y"}
    existing = json.dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [foreign]}).encode()
    index = oci_referrers.fallback_index(existing, first, artifact_type=sig.SIGNATURE_MEDIA_TYPE, what="i")
    again = oci_referrers.fallback_index(index, first, artifact_type=sig.SIGNATURE_MEDIA_TYPE, what="i")
    assert index == again
    entries = json.loads(index)["manifests"]
    assert [e["digest"] for e in entries] == [foreign["digest"], first.digest]
    assert oci_referrers.fallback_tag(DIGEST) == "sha256-" + "ab" * 32


def test_candidates_ignore_artifact_type_and_duplicates() -> None:
    entries = [{"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "01" * 32, "size": 100},  # skopeo drops type
               {"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "01" * 32, "size": 100},
               {"mediaType": media.OCI_INDEX, "digest": "sha256:" + "03" * 32, "size": 100},
               {"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "02" * 32, "size": 7, "artifactType": "lie"}]
    index = json.dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": entries}).encode()
    got = oci_referrers.candidates(index, what="i")
    assert [d.digest for d in got] == ["sha256:" + "01" * 32, "sha256:" + "02" * 32]


@pytest.mark.parametrize("index, message", [
    (b"x" * (oci_referrers.MAX_INDEX + 1), "above the"),
    (b"[1]", "not a JSON object"),
    (b'{"schemaVersion": 2, "schemaVersion": 2, "manifests": []}', "duplicate"),
    (b'{"schemaVersion": 2, "manifests": {}}', "not a list"),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "0" * 64,
                                                    "size": 1}] * (oci_referrers.MAX_REFERRERS + 1)}).encode(),
     "limit"),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": media.OCI_MANIFEST, "digest": "../../x",
                                                    "size": 1}]}).encode(), "wrong form"),
    (json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "0" * 64,
                                                    "size": 10**12}]}).encode(), "size"),
    (b'{"schemaVersion": 2, "manifests": [], "x": NaN}', "non-standard"),
])
def test_hostile_referrers_indexes_are_refused(index: bytes, message: str) -> None:
    with pytest.raises(Corrupt, match=message):
        oci_referrers.candidates(index, what="the referrers of x")


def _envelope_obj(key: SigningKey) -> dict[str, str]:
    result: dict[str, str] = json.loads(sig.sign(key, NAME, DIGEST, signed_at=WHEN))
    return result


@pytest.mark.parametrize("change, message", [
    ({"algorithm": "rsa"}, "ed25519 only"),
    ({"payloadType": "text/plain"}, "payloadType"),
    ({"extra": "1"}, "unexpected fields"),
    ({"sig": "AAAA"}, "64 bytes"),
    ({"sig": "!!!!"}, "not base64"),
    ({"keyid": "md5:1"}, "wrong form"),
    ({"payload": base64.b64encode(b"x" * (sig.MAX_PAYLOAD + 3)).decode()}, "at most"),
])
def test_hostile_envelopes_are_refused(key: SigningKey, change: dict[str, str], message: str) -> None:
    obj = {**_envelope_obj(key), **change}
    with pytest.raises(Corrupt, match=message):
        sig.open_envelope(json.dumps(obj).encode())


def test_non_canonical_or_extended_payloads_are_refused(key: SigningKey) -> None:
    payload = json.loads(sig.payload_for(NAME, DIGEST, signed_at=WHEN))
    with pytest.raises(Corrupt, match="canonical"):
        sig.read_claim(json.dumps(payload, indent=1).encode())
    payload["critical"]["identity"]["extra"] = "x"
    with pytest.raises(Corrupt, match="unexpected"):
        sig.read_claim(canonical(payload))
    payload["critical"]["identity"].pop("extra")
    payload["critical"]["identity"]["gallery"] = "../etc"
    with pytest.raises(Corrupt, match="gallery"):
        sig.read_claim(canonical(payload))


def test_names_and_expired_keys_are_checked_when_signing(key: SigningKey) -> None:
    with pytest.raises(InvalidArgument):
        sig.SignedName("Bad_Host", "img/team/base", "team", "base", "1.0.0")
    with pytest.raises(InvalidArgument):
        sig.SignedName("reg", "img/team/base", "team", "base", "1.0")
    with pytest.raises(InvalidArgument):
        sig.payload_for(NAME, "blake3:" + "ab" * 32, signed_at=WHEN)
    expired = SigningKey(key.name, key.private, type(key.public)(key.public.raw, expires=WHEN), key.created)
    with pytest.raises(InvalidArgument, match="expired"):
        sig.sign(expired, NAME, DIGEST, signed_at=WHEN)


@pytest.mark.parametrize(("gallery", "definition"), [("Team", "UbuntuServer"), ("team", "a--b"), ("t", "a__b")])
def test_every_repository_imgtool_pushes_to_can_be_signed(key: SigningKey, gallery: str, definition: str) -> None:
    """Names that are not repository components travel as `x--` + base32, and `--`/`__` are separators
    in distribution's grammar: a signature must bind those repositories too."""
    repository = fmt.repository("img", gallery, definition)
    name = sig.SignedName("127.0.0.1:5000", repository, gallery, definition, "1.0.0")
    claim = sig.read_claim(sig.open_envelope(sig.sign(key, name, DIGEST, signed_at=WHEN)).payload)
    assert claim.name == name


@pytest.mark.parametrize("repository", ["img//base", "img/-base", "img/base_", "Img/base", "img/a___b"])
def test_repositories_outside_the_registry_grammar_are_refused(repository: str) -> None:
    with pytest.raises(InvalidArgument, match="not a registry repository"):
        sig.SignedName("127.0.0.1:5000", repository, "team", "base", "1.0.0")
