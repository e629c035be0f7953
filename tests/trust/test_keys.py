"""Signing keys: generated 0600, listed, exported as public-key files that are read back strictly."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key

from imgtool.errors import AlreadyExists, InvalidArgument, NotFound, Refused
from imgtool.trust.keys import KeyRing, parse_public_key


def test_generate_makes_a_private_key_only_the_user_can_read(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    public = ring.generate("release")
    private_file = tmp_path / "keys" / "release.key"
    assert stat.S_IMODE(os.stat(private_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    assert ring.names() == ["release"]
    loaded = ring.load("release")
    assert loaded.public == public
    assert public.key_id == "sha256:" + hashlib.sha256(public.raw).hexdigest()
    assert len(public.raw) == 32


def test_a_key_is_never_replaced(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    first = ring.generate("release")
    with pytest.raises(AlreadyExists):
        ring.generate("release")
    assert ring.load("release").public.key_id == first.key_id


def test_export_carries_name_id_and_expiry_and_reads_back(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    public = ring.generate("release", expires=expires)
    text = ring.public("release").file_text()
    assert "PRIVATE" not in text
    assert text.count("-----BEGIN PUBLIC KEY-----") == 1
    back = parse_public_key(text, "release.pub")
    assert back == public
    assert back.expires == expires and back.name == "release"
    # The PEM block alone is a standard SPKI key that other tools read.
    pem = text[text.index("-----BEGIN"):].encode()
    assert serialization.load_pem_public_key(pem) is not None
    assert parse_public_key(pem.decode(), "plain.pem").key_id == public.key_id


def test_a_readable_private_key_is_refused(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("release")
    os.chmod(tmp_path / "keys" / "release.key", 0o644)
    with pytest.raises(Refused, match="readable by others"):
        ring.load("release")


def test_missing_key_and_bad_names(tmp_path: Path) -> None:
    ring = KeyRing(tmp_path / "keys")
    with pytest.raises(NotFound):
        ring.load("nope")
    with pytest.raises(InvalidArgument):
        ring.generate("../escape")
    with pytest.raises(InvalidArgument):
        ring.generate("past", expires=datetime(2001, 1, 1, tzinfo=UTC))


def _other_key_pem() -> str:
    key = generate_private_key(SECP256R1()).public_key()
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@pytest.mark.parametrize("mutate, message", [
    (lambda t: t.replace(t.split("imgtool-key-id: ")[1][:71], "sha256:" + "0" * 64), "says its key id"),
    (lambda t: "evil: line\n" + t, "unexpected line"),
    (lambda t: t + "trailing\n", "text after"),
    (lambda t: "x" * 9000, "bytes, not a public key"),
    (lambda t: "no pem here", "no PEM"),
    (lambda t: _other_key_pem(), "not an ed25519 key"),
    (lambda t: t.replace("imgtool-key: release", "imgtool-key-expires: someday"), "not a date"),
])
def test_public_key_files_are_read_strictly(tmp_path: Path, mutate: object, message: str) -> None:
    ring = KeyRing(tmp_path / "keys")
    ring.generate("release")
    text = ring.public("release").file_text()
    assert callable(mutate)
    with pytest.raises(InvalidArgument, match=message):
        parse_public_key(mutate(text), "given.pub")
