"""Revocation statements (pure): only a trusted key's signature over this name and digest counts."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument
from imgtool.oci.descriptor import canonical
from imgtool.trust import revocations as rev
from imgtool.trust import signatures as sig
from imgtool.trust.keys import KeyRing, SigningKey
from imgtool.trust.policy import TrustedKey
from tests.trust.samples import DIGEST, NAME, WHEN


@pytest.fixture
def ring(tmp_path: Path) -> KeyRing:
    keys = KeyRing(tmp_path / "keys")
    keys.generate("release")
    keys.generate("other")
    return keys


def trusted(key: SigningKey, gallery: str | None = None) -> list[TrustedKey]:
    return [TrustedKey(key.public, gallery, WHEN)]


def test_a_trusted_statement_is_verified_with_its_reason(ring: KeyRing) -> None:
    key = ring.load("release")
    data = rev.sign(key, NAME, DIGEST, "CVE-2026-1234", revoked_at=WHEN)
    verdict = rev.judge(data, keys=trusted(key), name=NAME, manifest_digest=DIGEST, when=WHEN)
    assert verdict == rev.Revoked("CVE-2026-1234", "2026-12-01T09:00:00Z", key.public.key_id)


def test_statements_that_do_not_count(ring: KeyRing) -> None:
    key, other = ring.load("release"), ring.load("other")
    data = rev.sign(key, NAME, DIGEST, "CVE-2026-1234", revoked_at=WHEN)

    def judged(blob: bytes, **over: object) -> object:
        args: dict[str, object] = {"keys": trusted(key), "name": NAME, "manifest_digest": DIGEST, "when": WHEN}
        args.update(over)
        return rev.judge(blob, **args)  # type: ignore[arg-type]

    assert "not a key trusted" in str(judged(data, keys=trusted(other)))
    assert "not a key trusted" in str(judged(data, keys=trusted(key, gallery="elsewhere")))
    assert "another manifest" in str(judged(data, manifest_digest="sha256:" + "cd" * 32))
    moved = sig.SignedName("127.0.0.1:5000", "img/team/base", "team", "base", "1.0.1")
    assert "another name" in str(judged(data, name=moved))
    envelope = json.loads(data)
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["critical"]["reason"] = "nothing to see"
    envelope["payload"] = base64.b64encode(canonical(payload)).decode()
    assert "bad signature" in str(judged(canonical(envelope)))
    # A signature is not a revocation, even by the same key over the same name and digest.
    signature = sig.sign(key, NAME, DIGEST, signed_at=WHEN)
    assert "malformed" in str(judged(signature))
    assert "malformed" in str(judged(b"\x00not json"))


def test_an_expired_key_revokes_nothing(tmp_path: Path) -> None:
    keys = KeyRing(tmp_path / "keys")
    keys.generate("short", expires=WHEN + timedelta(days=1), at=WHEN)
    key = keys.load("short")
    data = rev.sign(key, NAME, DIGEST, "old", revoked_at=WHEN)
    assert "expired" in str(rev.judge(data, keys=trusted(key), name=NAME, manifest_digest=DIGEST,
                                      when=WHEN + timedelta(days=2)))
    with pytest.raises(InvalidArgument, match="expired"):
        rev.sign(key, NAME, DIGEST, "late", revoked_at=WHEN + timedelta(days=2))
    with pytest.raises(InvalidArgument, match="reason"):
        rev.sign(key, NAME, DIGEST, " ", revoked_at=WHEN)
