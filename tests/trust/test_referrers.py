"""Signatures as OCI referrers on a real distribution 2.8 registry and on the hostile test registry.

imgtool.trust.referrers finds, attaches and copies them; imgtool.trust.policy judges them. The
transport is the tests' thin client (tests/trust/oci.py): what is under test is what imgtool does
with the bytes a registry serves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, Refused
from imgtool.oci import media
from imgtool.oci import referrers as oci_referrers
from imgtool.oci.descriptor import Descriptor, canonical
from imgtool.trust import referrers
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing, SigningKey
from imgtool.trust.policy import SIGNED, TrustStore
from tests.conftest import require_tools
from tests.remote.liar import Liar
from tests.remote.liar import running as liar_running
from tests.trust import token_registry
from tests.trust.oci import Adapter, Client, digest_of, push_artifact

WHEN = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
REPO = "team/base"


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("publisher")
    return ring


@pytest.fixture
def trust(tmp_path: Path, keys: KeyRing) -> TrustStore:
    store = TrustStore(tmp_path / "trust.json")
    store.add("origin", keys.public("publisher"))
    return store


@pytest.fixture
def liar() -> Iterator[Liar]:
    with liar_running() as server:
        yield server


def name_on(host: str, version: str = "1.0.0") -> sig.SignedName:
    return sig.SignedName(host, REPO, "team", "base", version)


def publish(adapter: Adapter, host: str, key: SigningKey, *, version: str = "1.0.0",
            sign_digest: str | None = None) -> tuple[str, referrers.Attached]:
    """Push a version artifact, sign it (or, lying, sign `sign_digest` instead) and attach the signature."""
    digest, manifest = push_artifact(adapter.client, REPO, version, [f"disk of {version}".encode()])
    envelope = sig.sign(key, name_on(host, version), sign_digest or digest, signed_at=WHEN)
    attached = referrers.make(envelope, Descriptor(media.OCI_MANIFEST, digest, len(manifest)),
                              key_id=key.public.key_id, created=WHEN)
    referrers.attach(adapter, REPO, attached)
    return digest, attached


def envelopes(found: list[referrers.Attached]) -> list[bytes]:
    return [a.envelope for a in found]


# -- a real registry ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    require_tools("docker-registry")
    with token_registry.running() as host:
        yield host


@pytest.mark.integration
def test_signatures_round_trip_through_distribution_tag_fallback(registry: str, keys: KeyRing,
                                                                  trust: TrustStore) -> None:
    adapter = Adapter(Client(registry))
    key = keys.load("publisher")
    digest, attached = publish(adapter, registry, key)
    referrers.attach(adapter, REPO, attached)  # idempotent: the index lists it once
    index = adapter.get_manifest(REPO, oci_referrers.fallback_tag(digest)).data
    assert index is not None and len(json.loads(index)["manifests"]) == 1
    assert adapter.referrers_api(REPO, digest) is None  # distribution 2.8 has no referrers API
    found = referrers.find(adapter, REPO, digest)
    assert found == [attached]
    verdict = trust.check("origin", name_on(registry), digest, envelopes(found), when=WHEN)
    assert verdict.policy == SIGNED and verdict.verified_by == (key.public.key_id,)


@pytest.mark.integration
def test_signatures_are_copied_byte_for_byte(registry: str, keys: KeyRing, tmp_path: Path) -> None:
    adapter = Adapter(Client(registry))
    digest, attached = publish(adapter, registry, keys.load("publisher"), version="2.0.0")
    manifest = adapter.get_manifest(REPO, digest).data
    assert manifest is not None
    target = "mirror/team/base"
    for blob in (b"{}", b"disk of 2.0.0"):
        adapter.put_blob(target, digest_of(blob), blob)
    adapter.put_manifest(target, "2.0.0", manifest, media.OCI_MANIFEST)
    assert referrers.copy_all(adapter, REPO, adapter, target, digest) == 1
    assert referrers.find(adapter, target, digest) == [attached]  # same manifest digest, same envelope


# -- the hostile registry -------------------------------------------------------------------------------------------

def test_liar_honest_baseline(liar: Liar, keys: KeyRing, trust: TrustStore) -> None:
    adapter = Adapter(Client(liar.host))
    digest, attached = publish(adapter, liar.host, keys.load("publisher"))
    assert referrers.find(adapter, REPO, digest) == [attached]


def test_unsigned_version_is_refused(liar: Liar, trust: TrustStore) -> None:
    adapter = Adapter(Client(liar.host))
    digest, _ = push_artifact(adapter.client, REPO, "1.0.0", [b"x"])
    assert referrers.find(adapter, REPO, digest) == []
    with pytest.raises(Refused, match="is not signed"):
        trust.check("origin", name_on(liar.host), digest, [], when=WHEN)


def test_a_referrers_index_pointing_at_unrelated_manifests_is_refused(liar: Liar, keys: KeyRing) -> None:
    adapter = Adapter(Client(liar.host))
    key = keys.load("publisher")
    digest, _ = push_artifact(adapter.client, REPO, "1.0.0", [b"one"])
    other, _ = publish(adapter, liar.host, key, version="1.0.1")
    unrelated = referrers.find(adapter, REPO, other)[0]
    index = oci_referrers.fallback_index(None, Descriptor(media.OCI_MANIFEST, unrelated.manifest_digest,
                                                          len(unrelated.manifest)),
                                         artifact_type=sig.SIGNATURE_MEDIA_TYPE, what="i")
    liar.put_manifest(REPO, index, tag=oci_referrers.fallback_tag(digest), media_type=media.OCI_INDEX)
    with pytest.raises(Corrupt, match="refers to"):
        referrers.find(adapter, REPO, digest)


def test_a_signature_over_another_digest_is_refused(liar: Liar, keys: KeyRing, trust: TrustStore) -> None:
    adapter = Adapter(Client(liar.host))
    digest, _ = publish(adapter, liar.host, keys.load("publisher"), sign_digest="sha256:" + "0" * 64)
    found = referrers.find(adapter, REPO, digest)
    assert len(found) == 1
    with pytest.raises(Refused, match="signs another manifest"):
        trust.check("origin", name_on(liar.host), digest, envelopes(found), when=WHEN)


def test_a_signature_served_under_another_tag_is_refused(liar: Liar, keys: KeyRing, trust: TrustStore) -> None:
    adapter = Adapter(Client(liar.host))
    digest, _ = publish(adapter, liar.host, keys.load("publisher"), version="1.0.0")
    liar.repo(REPO).tags["9.0.0"] = digest  # the liar re-tags a validly signed version
    served = adapter.get_manifest(REPO, "9.0.0").data
    assert served is not None and digest_of(served) == digest
    found = referrers.find(adapter, REPO, digest)
    with pytest.raises(Refused, match="signs another name"):
        trust.check("origin", name_on(liar.host, "9.0.0"), digest, envelopes(found), when=WHEN)


@pytest.mark.parametrize("target", ["envelope", "manifest"])
def test_wrong_bytes_for_a_signature_digest_are_refused(liar: Liar, keys: KeyRing, target: str) -> None:
    adapter = Adapter(Client(liar.host))
    digest, attached = publish(adapter, liar.host, keys.load("publisher"))
    layer = sig.signature_layer(attached.manifest, subject_digest=digest, what="m")
    assert layer is not None
    path = f"/v2/{REPO}/blobs/{layer.digest}" if target == "envelope" else \
        f"/v2/{REPO}/manifests/{attached.manifest_digest}"
    liar.lie("wrong-bytes", path=path)
    with pytest.raises(Corrupt, match="other bytes"):
        referrers.find(adapter, REPO, digest)


def test_a_flood_of_referrers_is_refused(liar: Liar, keys: KeyRing) -> None:
    adapter = Adapter(Client(liar.host))
    digest, _ = push_artifact(adapter.client, REPO, "1.0.0", [b"one"])
    entries = [{"mediaType": media.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 10}
               for i in range(oci_referrers.MAX_REFERRERS + 1)]
    liar.put_manifest(REPO, json.dumps({"schemaVersion": 2, "manifests": entries}).encode(),
                      tag=oci_referrers.fallback_tag(digest), media_type=media.OCI_INDEX)
    with pytest.raises(Corrupt, match="limit"):
        referrers.find(adapter, REPO, digest)


def test_an_oversized_referrers_index_is_refused(liar: Liar) -> None:
    adapter = Adapter(Client(liar.host))
    digest, _ = push_artifact(adapter.client, REPO, "1.0.0", [b"one"])
    liar.lie("huge-manifest", path=f"/v2/{REPO}/manifests/{oci_referrers.fallback_tag(digest)}")
    with pytest.raises(Corrupt, match="above the"):
        referrers.find(adapter, REPO, digest)


def test_referrers_api_without_artifact_type_and_missing_entries(keys: KeyRing, trust: TrustStore) -> None:
    with liar_running(referrers_api=True) as liar:
        adapter = Adapter(Client(liar.host))
        digest, attached = publish(adapter, liar.host, keys.load("publisher"))
        # Strip artifactType from the tag index (what skopeo does) and list a manifest that is gone.
        tag = oci_referrers.fallback_tag(digest)
        gone = {"mediaType": media.OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 10}
        plain = [{"mediaType": media.OCI_MANIFEST, "digest": attached.manifest_digest,
                  "size": len(attached.manifest)}, gone]
        liar.put_manifest(REPO, json.dumps({"schemaVersion": 2, "manifests": plain}).encode(), tag=tag,
                          media_type=media.OCI_INDEX)
        found = referrers.find(adapter, REPO, digest)
        assert found == [attached]
        assert trust.check("origin", name_on(liar.host), digest, envelopes(found), when=WHEN).policy == SIGNED
        assert any(s.path.startswith(f"/v2/{REPO}/referrers/") for s in liar.seen())


def test_a_signature_blob_of_the_wrong_size_is_refused(liar: Liar, keys: KeyRing) -> None:
    adapter = Adapter(Client(liar.host))
    key = keys.load("publisher")
    digest, manifest = push_artifact(adapter.client, REPO, "1.0.0", [b"one"])
    envelope = sig.sign(key, name_on(liar.host), digest, signed_at=WHEN)
    referrer = json.loads(sig.referrer_manifest(envelope, Descriptor(media.OCI_MANIFEST, digest, len(manifest)),
                                                key_id=key.public.key_id, created=WHEN))
    referrer["layers"][0]["size"] = len(envelope) + 1
    data = canonical(referrer)
    referrers.attach(adapter, REPO, referrers.Attached(digest_of(data), data, envelope))
    with pytest.raises(Corrupt, match="bytes, its manifest says"):
        referrers.find(adapter, REPO, digest)
