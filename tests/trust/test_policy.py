"""Trust policy: fail closed, accept only a trusted key's signature over this exact name and digest."""

from __future__ import annotations

import base64
import json
import os
import stat
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from imgtool.errors import AlreadyExists, InvalidArgument, NotFound, Refused
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing, PublicKey, SigningKey
from imgtool.trust.pins import check_pin, parse_remote_ref
from imgtool.trust.policy import ANY, SIGNED, UNSET, TrustStore
from tests.trust.samples import DIGEST, NAME, WHEN


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("publisher")
    ring.generate("stranger")
    return ring


@pytest.fixture
def store(tmp_path: Path, ring: KeyRing) -> TrustStore:
    trust = TrustStore(tmp_path / "trust.json")
    trust.add("origin", ring.public("publisher"))
    return trust


def signed(key: SigningKey, name: sig.SignedName = NAME, digest: str = DIGEST) -> bytes:
    return sig.sign(key, name, digest, signed_at=WHEN)


def test_a_trusted_signature_over_name_and_digest_is_accepted(store: TrustStore, ring: KeyRing) -> None:
    publisher = ring.load("publisher")
    verdict = store.check("origin", NAME, DIGEST, [signed(ring.load("stranger")), signed(publisher)], when=WHEN)
    assert verdict.policy == SIGNED
    assert verdict.verified_by == (publisher.public.key_id,)
    assert verdict.warnings == ()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


def refusal(store: TrustStore, envelopes: list[bytes], *, when: datetime = WHEN) -> str:
    with pytest.raises(Refused) as caught:
        store.check("origin", NAME, DIGEST, envelopes, when=when)
    return f"{caught.value.message} / {caught.value.hint}"


def test_unsigned_is_refused(store: TrustStore) -> None:
    text = refusal(store, [])
    assert "is not signed" in text and "nothing was stored" in text and "--sign" in text


def test_wrong_key_is_refused_naming_it(store: TrustStore, ring: KeyRing) -> None:
    stranger = ring.load("stranger").public.key_id
    text = refusal(store, [signed(ring.load("stranger"))])
    assert stranger[:23] in text and "not a trusted key" in text
    assert ring.public("publisher").key_id[:23] in text  # what is trusted, so the user can compare


def test_other_name_other_digest_and_other_tag_are_refused(store: TrustStore, ring: KeyRing) -> None:
    publisher = ring.load("publisher")
    assert "signs another manifest" in refusal(store, [signed(publisher, digest="sha256:" + "cd" * 32)])
    assert "signs another name" in refusal(store, [signed(publisher, replace(NAME, version="1.0.1"))])
    assert "signs another name" in refusal(store, [signed(publisher, replace(NAME, gallery="other"))])
    assert "signs another name" in refusal(store, [signed(publisher, replace(NAME, repository="img/x/base"))])
    assert "signs another name" in refusal(store, [signed(publisher, replace(NAME, registry="evil.example"))])


def test_tampered_and_malformed_signatures_are_refused(store: TrustStore, ring: KeyRing) -> None:
    obj = json.loads(signed(ring.load("publisher")))
    sig_bytes = bytearray(base64.b64decode(obj["sig"]))
    sig_bytes[0] ^= 1
    obj["sig"] = base64.b64encode(bytes(sig_bytes)).decode()
    assert "bad signature" in refusal(store, [json.dumps(obj).encode()])
    assert "malformed" in refusal(store, [b"{not json"])


def test_an_expired_key_is_refused(tmp_path: Path, ring: KeyRing) -> None:
    trust = TrustStore(tmp_path / "t.json")
    trust.add("origin", ring.public("publisher"), expires=WHEN + timedelta(days=1))
    envelope = signed(ring.load("publisher"))
    assert trust.check("origin", NAME, DIGEST, [envelope], when=WHEN).policy == SIGNED
    assert "key expired on" in refusal(trust, [envelope], when=WHEN + timedelta(days=2))


def test_a_key_limited_to_a_gallery_does_not_vouch_for_another(tmp_path: Path, ring: KeyRing) -> None:
    trust = TrustStore(tmp_path / "t.json")
    trust.add("origin", ring.public("publisher"), gallery="other")
    assert "trusted only for gallery other" in refusal(trust, [signed(ring.load("publisher"))])
    trust.add("origin", ring.public("publisher"), gallery="team")
    assert trust.check("origin", NAME, DIGEST, [signed(ring.load("publisher"))], when=WHEN).policy == SIGNED


def test_no_policy_fails_closed_and_any_is_explicit_with_a_warning(tmp_path: Path, ring: KeyRing) -> None:
    trust = TrustStore(tmp_path / "t.json")
    assert trust.remote("mirror").policy == UNSET
    with pytest.raises(Refused, match="no trust policy"):
        trust.check("mirror", NAME, DIGEST, [], when=WHEN)
    trust.set_policy("mirror", ANY)
    verdict = trust.check("mirror", NAME, DIGEST, [], when=WHEN)
    assert verdict.policy == ANY and verdict.verified_by == ()
    assert len(verdict.warnings) == 1 and "unverified" in verdict.warnings[0]
    trust.add("mirror", ring.public("publisher"))  # a key turns `any` into `signed`
    assert trust.remote("mirror").policy == SIGNED
    with pytest.raises(Refused):
        trust.set_policy("mirror", ANY)
    with pytest.raises(InvalidArgument):
        TrustStore(tmp_path / "u.json").set_policy("x", SIGNED)


def test_add_list_remove_persist(store: TrustStore, ring: KeyRing) -> None:
    with pytest.raises(AlreadyExists):
        store.add("origin", ring.public("publisher"))
    again = TrustStore(store.path)
    assert [k.key_id for k in again.remote("origin").keys] == [ring.public("publisher").key_id]
    assert isinstance(again.remote("origin").keys[0].key, PublicKey)
    gone = again.remove("origin", ring.public("publisher").key_id[:20])
    assert len(gone) == 1
    assert again.remote("origin").policy == UNSET
    with pytest.raises(NotFound):
        again.remove("origin")


def test_pinned_references() -> None:
    ref = parse_remote_ref(f"origin:team/base@1.0.0@{DIGEST}")
    assert (ref.remote, ref.gallery, ref.definition, str(ref.version), ref.digest) == (
        "origin", "team", "base", "1.0.0", DIGEST)
    assert str(ref) == f"origin:team/base@1.0.0@{DIGEST}"
    check_pin(ref, DIGEST, where="the local copy")
    with pytest.raises(Refused, match="pinned to"):
        check_pin(ref, "sha256:" + "cd" * 32, where="the local copy")
    assert parse_remote_ref("origin:team/base").version is None
    assert parse_remote_ref("origin:team/base@latest").digest is None
    for bad in ("team/base", f"origin:team/base@latest@{DIGEST}", "origin:team/base@1.0.0@sha256:12",
                "../x:team/base", f"origin:team/base@{DIGEST}"):
        with pytest.raises(InvalidArgument):
            parse_remote_ref(bad)
