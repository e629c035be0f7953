"""Signing keys: ed25519, kept under <home>/keys/, and the public-key files people exchange.

    <home>/keys/NAME.key    the private key, PKCS#8 PEM, unencrypted, mode 0600 (like an SSH key)
    <home>/keys/NAME.json   {kind, format, name, key_id, created, expires}

A key id is `sha256:` + the hex SHA-256 of the 32-byte raw ed25519 public key
(RFC 8032 encoding). It names a key independently of how it is encoded (PEM,
JWK, raw), as the TUF and Notary key ids do with their own encodings.

A public-key file is a standard SubjectPublicKeyInfo PEM block, preceded by
optional `imgtool-key*: value` lines (RFC 7468 allows text before the block):
the key's name, its id (checked against the key when read) and its expiry.
A private key is never printed or exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from imgtool.clock import now, parse_time, stamp
from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused
from imgtool.names import check_name
from imgtool.records import check_record
from store import atomic

ALGORITHM = "ed25519"
MAX_PUBLIC_KEY_FILE = 8 * 1024
KEY_ID = re.compile(r"^sha256:[0-9a-f]{64}$")
_META_FIELDS = {"name", "key_id", "created", "expires"}
_HEADER = re.compile(r"^imgtool-key(-id|-expires)?: (\S+)$")
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----\n[A-Za-z0-9+/=\n]+-----END PUBLIC KEY-----\n?")


def key_id_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class PublicKey:
    """An ed25519 public key with its id, and the name and expiry its file gave (if any)."""

    raw: bytes
    name: str | None = None
    expires: datetime | None = None

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> str:
        key = Ed25519PublicKey.from_public_bytes(self.raw)
        return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def file_text(self) -> str:
        """The text of a public-key file: header lines, then the PEM block."""
        lines = [f"imgtool-key: {self.name}"] if self.name else []
        lines.append(f"imgtool-key-id: {self.key_id}")
        if self.expires is not None:
            lines.append(f"imgtool-key-expires: {stamp(self.expires)}")
        return "\n".join(lines) + "\n" + self.pem()


@dataclass(frozen=True)
class SigningKey:
    name: str
    private: Ed25519PrivateKey
    public: PublicKey
    created: datetime

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def parse_public_key(text: str, source: str) -> PublicKey:
    """Read a public-key file strictly: an ed25519 SPKI PEM block and only known header lines.

    Raises InvalidArgument naming `source` when anything is off, including a
    key-id header that does not match the key.
    """
    if len(text) > MAX_PUBLIC_KEY_FILE:
        raise InvalidArgument(f"{source} is {len(text)} bytes, not a public key", hint=_EXPORT_HINT)
    match = _PEM.search(text)
    if match is None:
        raise InvalidArgument(f"{source} holds no PEM public key", hint=_EXPORT_HINT)
    headers = _headers(text[:match.start()], source)
    if text[match.end():].strip():
        raise InvalidArgument(f"{source} has text after its public key", hint=_EXPORT_HINT)
    try:
        key = serialization.load_pem_public_key(match.group(0).encode())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidArgument(f"{source} is not a readable public key", hint=_EXPORT_HINT) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidArgument(f"{source} is not an ed25519 key; imgtool signs with ed25519 only", hint=_EXPORT_HINT)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    expires = parse_time(headers["-expires"], f"expiry in {source}") if "-expires" in headers else None
    public = PublicKey(raw, name=headers.get(""), expires=expires)
    if "-id" in headers and headers["-id"] != public.key_id:
        raise InvalidArgument(f"{source} says its key id is {headers['-id']} but the key is {public.key_id}",
                              hint="the file was altered: ask its owner for it again")
    return public


_EXPORT_HINT = "ask the key's owner for the output of imgtool key export NAME"


def _headers(text: str, source: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _HEADER.fullmatch(line)
        if match is None or (match.group(1) or "") in found:
            raise InvalidArgument(f"{source} has an unexpected line before its key: {line[:60]!r}", hint=_EXPORT_HINT)
        found[match.group(1) or ""] = match.group(2)
    return found


class KeyRing:
    """The user's own signing keys, in one folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _paths(self, name: str) -> tuple[Path, Path]:
        check_name(name, "key")
        return self.folder / f"{name}.key", self.folder / f"{name}.json"

    def generate(self, name: str, *, expires: datetime | None = None, at: datetime | None = None) -> PublicKey:
        """Create key NAME at time `at` (default: now). The private key file is created 0600 and never
        replaced; an expiry at or before `at` is refused."""
        key_path, meta_path = self._paths(name)
        if meta_path.exists() or key_path.exists():  # said before a key is made
            raise AlreadyExists(f"key {name} already exists", hint=f"imgtool key export {name} shows its public key")
        return self._keep(name, Ed25519PrivateKey.generate(), expires=expires, at=at)

    def import_private(self, name: str, pem: bytes, *, expires: datetime | None = None,
                       at: datetime | None = None) -> PublicKey:
        """Keep an existing ed25519 private key (PKCS#8 PEM, unencrypted) as key NAME, as `generate` keeps a
        new one: 0600, never replacing a key. The same key under two names is refused (one key, one name)."""
        try:
            private = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise InvalidArgument("the private key is encrypted", hint="decrypt it first: openssl pkey -in KEY "
                                                                       "-out plain.pem (and keep that file private)"
                                  ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise InvalidArgument("the file is not a PEM private key", hint="give the NAME.key file of another "
                                  "imgtool home, or a key from openssl genpkey -algorithm ed25519") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise InvalidArgument("the private key is not ed25519", hint="imgtool signs with ed25519 keys only")
        key_id = key_id_of(_raw_public(private))
        for other in self.names():
            if self.load(other).public.key_id == key_id:
                raise AlreadyExists(f"that key is already here as {other} ({key_id})",
                                    hint=f"use it as {other}, or imgtool key delete {other} first")
        return self._keep(name, private, expires=expires, at=at)

    def _keep(self, name: str, private: Ed25519PrivateKey, *, expires: datetime | None,
              at: datetime | None) -> PublicKey:
        key_path, meta_path = self._paths(name)
        if meta_path.exists() or key_path.exists():
            raise AlreadyExists(f"key {name} already exists", hint=f"imgtool key export {name} shows its public key")
        created = now() if at is None else at
        if expires is not None and expires <= created:
            raise InvalidArgument("the expiry is in the past", hint="give a future date with --expires")
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        public = PublicKey(_raw_public(private), name=name, expires=expires)
        meta = {"kind": "imgtool.signing-key", "format": 1, "name": name, "key_id": public.key_id,
                "created": stamp(created), "expires": stamp(expires) if expires else None}
        atomic.makedirs(self.folder)
        # Private key first: metadata without its key would list a key that cannot sign.
        if not atomic.create(key_path, pem, mode=0o600) or not atomic.create(
                meta_path, json.dumps(meta, sort_keys=True).encode(), mode=0o600):
            raise AlreadyExists(f"key {name} was created concurrently", hint="imgtool key list")
        return public

    def find(self, name_or_id: str) -> SigningKey:
        """A key by its name, its full id, or an unambiguous prefix of its id (sha256:…)."""
        if not name_or_id.startswith("sha256:"):
            return self.load(name_or_id)
        found = [k for k in (self.load(n) for n in self.names()) if k.public.key_id.startswith(name_or_id)]
        if len(found) != 1:
            raise (NotFound if not found else InvalidArgument)(
                f"{len(found) or 'no'} signing keys have an id starting {name_or_id}",
                hint="imgtool key list shows names and ids; give the name or a longer id")
        return found[0]

    def delete(self, name: str) -> None:
        """Remove key NAME: its metadata first (it stops being listed or used), then the private key."""
        key_path, meta_path = self._paths(name)
        if not meta_path.exists():
            raise NotFound(f"no signing key named {name}", hint="imgtool key list")
        meta_path.unlink()
        key_path.unlink(missing_ok=True)

    def names(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.glob("*.json") if not p.name.startswith("."))

    def public(self, name: str) -> PublicKey:
        return self.load(name).public

    def load(self, name: str) -> SigningKey:
        """Key NAME, checked: private file private to the user, metadata matching the key."""
        key_path, meta_path = self._paths(name)
        if not meta_path.exists():
            raise NotFound(f"no signing key named {name}", hint="imgtool key list; imgtool key generate NAME")
        meta = check_record(json.loads(meta_path.read_text()), kind="imgtool.signing-key", fmt=1,
                            fields=_META_FIELDS, what=f"key {name}")
        mode = os.stat(key_path).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise Refused(f"private key {key_path} is readable by others (mode {stat.S_IMODE(mode):o})",
                          hint=f"chmod 600 {key_path}, and consider the key exposed")
        private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise Corrupt(f"{key_path} is not an ed25519 private key", hint="imgtool key generate a new key")
        expires = parse_time(meta["expires"], "key expiry") if meta.get("expires") else None
        public = PublicKey(_raw_public(private), name=name, expires=expires)
        if public.key_id != meta["key_id"]:
            raise Corrupt(f"key {name}: the private key does not match its recorded id",
                          hint=f"the files under {self.folder} were altered; generate a new key")
        return SigningKey(name, private, public, parse_time(meta["created"], "key creation time"))


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
