"""Trust policy per remote: which publishers' keys it trusts, and the verdict on one version.

    <home>/trust.json  {"kind": "imgtool.trust", "format": 1, "remotes": {NAME: {"policy": P, "keys": [...]}}}

A remote's policy is
- `signed` as soon as it has a trusted key: a version is accepted only with a
  signature, by a key trusted for that remote (and gallery, when the key is
  limited to one), over that exact name and manifest digest, by a key that has
  not expired;
- `any` only when set explicitly (`imgtool trust policy REMOTE any`) on a
  remote without keys: versions are accepted unchecked and every use returns a
  warning for the caller to show;
- otherwise unset, and using the remote is refused: fail closed.

The verdict never depends on what the remote says about a signature besides the
signature itself: artifact types, annotations and key-id hints only choose what
to check.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from imgtool.clock import now, parse_time, stamp
from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused
from imgtool.names import check_name
from imgtool.records import check_record
from imgtool.trust.keys import PublicKey, parse_public_key
from imgtool.trust.signatures import SignedName, open_envelope, read_claim
from imgtool.vocab import TrustPolicy
from store import atomic

SIGNED, ANY, UNSET = TrustPolicy.SIGNED, TrustPolicy.ANY, TrustPolicy.UNSET


def short_id(key_id: str) -> str:
    """`sha256:` and the first 16 hex digits: enough to tell keys apart in a message."""
    return key_id[:23]


@dataclass(frozen=True)
class TrustedKey:
    key: PublicKey
    gallery: str | None
    added: datetime

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def applies_to(self, gallery: str) -> bool:
        return self.gallery is None or self.gallery == gallery


@dataclass(frozen=True)
class RemoteTrust:
    remote: str
    explicit_any: bool
    keys: tuple[TrustedKey, ...]
    signing_key: str | None = None  # the user's own key that signs what is pushed there

    @property
    def policy(self) -> TrustPolicy:
        if self.keys:
            return SIGNED
        return ANY if self.explicit_any else UNSET


@dataclass(frozen=True)
class Finding:
    """What one signature found on a version turned out to be."""

    key_id: str
    outcome: str

    @property
    def verified(self) -> bool:
        return self.outcome == "verified"


@dataclass(frozen=True)
class Acceptance:
    """A version may be used. `warnings` are for the caller to show (the library never prints)."""

    policy: TrustPolicy
    verified_by: tuple[str, ...]
    warnings: tuple[str, ...]


class TrustStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    # -- records ----------------------------------------------------------------------------------------------------

    def remotes(self) -> dict[str, RemoteTrust]:
        if not self.path.exists():
            return {}
        obj = check_record(json.loads(self.path.read_text()), kind="imgtool.trust", fmt=1, fields={"remotes"},
                           what=str(self.path))
        return {name: _remote_from_json(name, entry) for name, entry in sorted(obj["remotes"].items())}

    def remote(self, remote: str) -> RemoteTrust:
        check_name(remote, "remote")
        return self.remotes().get(remote, RemoteTrust(remote, explicit_any=False, keys=()))

    def _save(self, remotes: dict[str, RemoteTrust]) -> None:
        body = {"kind": "imgtool.trust", "format": 1,
                "remotes": {name: _remote_to_json(rt) for name, rt in sorted(remotes.items())
                            if rt.keys or rt.explicit_any or rt.signing_key}}
        atomic.replace(self.path, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)

    def add(self, remote: str, key: PublicKey, *, gallery: str | None = None,
            expires: datetime | None = None) -> TrustedKey:
        """Trust `key` on `remote` (for one gallery, or all). Adding a key makes the policy `signed`."""
        if gallery is not None:
            check_name(gallery, "gallery")
        if expires is not None:
            key = PublicKey(key.raw, name=key.name, expires=expires)
        rt = self.remote(remote)
        if any(k.key_id == key.key_id and k.gallery == gallery for k in rt.keys):
            raise AlreadyExists(f"key {short_id(key.key_id)} is already trusted on {remote}"
                                + (f" for gallery {gallery}" if gallery else ""), hint=f"imgtool trust list {remote}")
        entry = TrustedKey(key, gallery, now())
        self._save({**self.remotes(), remote: replace(rt, explicit_any=False, keys=(*rt.keys, entry))})
        return entry

    def remove(self, remote: str, key_id: str | None = None, *, gallery: str | None = None) -> list[TrustedKey]:
        """Forget trusted keys of `remote` (one key id or prefix, one gallery, or all); returns those removed."""
        rt = self.remote(remote)
        gone = [k for k in rt.keys if (key_id is None or k.key_id.startswith(key_id))
                and (gallery is None or k.gallery == gallery)]
        if not gone and not (key_id is None and gallery is None and rt.explicit_any):
            raise NotFound(f"no trusted key on {remote} matches", hint=f"imgtool trust list {remote}")
        kept = tuple(k for k in rt.keys if k not in gone)
        explicit_any = rt.explicit_any and not (key_id is None and gallery is None)
        self._save({**self.remotes(), remote: replace(rt, explicit_any=explicit_any, keys=kept)})
        return gone

    def set_signing_key(self, remote: str, key_name: str | None) -> RemoteTrust:
        """Sign every version pushed to `remote` with the user's key `key_name` (None: stop)."""
        if key_name is not None:
            check_name(key_name, "key")
        updated = replace(self.remote(remote), signing_key=key_name)
        self._save({**self.remotes(), remote: updated})
        return updated

    def set_policy(self, remote: str, policy: str) -> RemoteTrust:
        """`any` (explicit, on a remote without keys) or `signed` (needs a key: it is what `trust add` gives)."""
        rt = self.remote(remote)
        if policy == ANY:
            if rt.keys:
                raise Refused(f"{remote} trusts {len(rt.keys)} key(s), so its policy is signed",
                              hint=f"imgtool trust remove {remote} first if you really want to accept anything")
            updated = replace(rt, explicit_any=True)
        elif policy == SIGNED:
            if not rt.keys:
                raise InvalidArgument(f"{remote} has no trusted key to check signatures with",
                                      hint=f"imgtool trust add {remote} PUBLISHER.pub")
            updated = replace(rt, explicit_any=False)
        else:
            raise InvalidArgument(f"unknown policy '{policy}'", hint="use signed or any")
        self._save({**self.remotes(), remote: updated})
        return updated

    # -- verdicts ---------------------------------------------------------------------------------------------------

    def check(self, remote: str, name: SignedName, manifest_digest: str, envelopes: Sequence[bytes], *,
              when: datetime | None = None) -> Acceptance:
        """Accept version `name` = `manifest_digest` from `remote` given the signature envelopes found, or raise.

        Raises Refused naming every signature found (by key id) and what was
        wrong with it, and what to do.
        """
        rt = self.remote(remote)
        label = f"{name.gallery}/{name.definition}@{name.version} from {remote}"
        if rt.policy == ANY:
            return Acceptance(ANY, (), (f"{label} is used unverified: remote {remote} has policy 'any' "
                                        f"(imgtool trust add {remote} KEY.pub to require signatures)",))
        if rt.policy == UNSET:
            raise Refused(f"remote {remote} has no trust policy, so {label} cannot be used",
                          hint=f"trust its publisher: imgtool trust add {remote} PUBLISHER.pub (from their "
                               f"imgtool key export), or accept anything explicitly: imgtool trust policy {remote} any")
        findings = evaluate(rt, name, manifest_digest, envelopes, when=when or now())
        verified = tuple(sorted({f.key_id for f in findings if f.verified}))
        if verified:
            return Acceptance(SIGNED, verified, ())
        raise Refused(_refusal(label, manifest_digest, findings), hint=_refusal_hint(rt, name))


def evaluate(rt: RemoteTrust, name: SignedName, manifest_digest: str, envelopes: Sequence[bytes], *,
             when: datetime) -> list[Finding]:
    return [_judge(rt, name, manifest_digest, data, when) for data in envelopes]


def _judge(rt: RemoteTrust, name: SignedName, digest: str, data: bytes, when: datetime) -> Finding:
    try:
        envelope = open_envelope(data)
    except Corrupt as exc:
        return Finding("unknown key", f"malformed ({exc.message})")
    candidates = [k for k in rt.keys if k.key_id == envelope.key_id]
    applicable = [k for k in candidates if k.applies_to(name.gallery)]
    if not applicable:
        scope = f"trusted only for gallery {candidates[0].gallery}" if candidates else "not a trusted key"
        return Finding(envelope.key_id, scope)
    key = applicable[0].key
    if not key.verify(envelope.signature, envelope.signed_bytes()):
        return Finding(envelope.key_id, "bad signature (the signature does not match its payload)")
    try:
        claim = read_claim(envelope.payload)
    except Corrupt as exc:
        return Finding(envelope.key_id, f"malformed payload ({exc.message})")
    if claim.manifest_digest != digest:
        return Finding(envelope.key_id, f"signs another manifest ({claim.manifest_digest[:19]}…)")
    if claim.name != name:
        return Finding(envelope.key_id, f"signs another name ({claim.name})")
    if key.expires is not None and when >= key.expires:
        return Finding(envelope.key_id, f"key expired on {stamp(key.expires)}")
    return Finding(envelope.key_id, "verified")


def _refusal(label: str, digest: str, findings: list[Finding]) -> str:
    if not findings:
        return f"{label} ({digest[:19]}…) is not signed, and the remote's policy is signed"
    found = "; ".join(f"{short_id(f.key_id)}…: {f.outcome}" for f in findings[:5])
    more = f"; and {len(findings) - 5} more" if len(findings) > 5 else ""
    return f"{label} ({digest[:19]}…) has no valid signature by a trusted key: {found}{more}"


def _refusal_hint(rt: RemoteTrust, name: SignedName) -> str:
    trusted = ", ".join(short_id(k.key_id) + "…" for k in rt.keys if k.applies_to(name.gallery)) or "none"
    return (f"nothing was stored; trusted for {name.gallery} on {rt.remote}: {trusted}. Ask the publisher to "
            f"sign it (imgtool push {name.gallery}/{name.definition}@{name.version} REMOTE --sign KEY), or if you "
            f"trust another key: imgtool trust add {rt.remote} KEY.pub")


def _remote_from_json(name: str, entry: Any) -> RemoteTrust:
    what = f"trust entry for {name}"
    if not isinstance(entry, dict) or set(entry) - {"signing_key"} != {"policy", "keys"} \
            or entry["policy"] not in (SIGNED, ANY, UNSET) or not isinstance(entry["keys"], list) \
            or not isinstance(entry.get("signing_key"), str | None):
        raise Corrupt(f"{what} is malformed", hint="fix or remove trust.json in the imgtool home")
    keys = tuple(_key_from_json(k, what) for k in entry["keys"])
    return RemoteTrust(name, explicit_any=entry["policy"] == ANY and not keys, keys=keys,
                       signing_key=entry.get("signing_key"))


def _key_from_json(obj: Any, what: str) -> TrustedKey:
    if not isinstance(obj, dict) or set(obj) != {"public_key", "gallery", "added"}:
        raise Corrupt(f"{what} has a malformed key", hint="fix or remove trust.json in the imgtool home")
    try:
        key = parse_public_key(obj["public_key"], what)
        return TrustedKey(key, obj["gallery"], parse_time(obj["added"], "added"))
    except InvalidArgument as exc:
        raise Corrupt(exc.message, hint="fix or remove trust.json in the imgtool home") from exc


def _remote_to_json(rt: RemoteTrust) -> dict[str, Any]:
    return {"policy": rt.policy, "signing_key": rt.signing_key,
            "keys": [{"public_key": k.key.file_text(), "gallery": k.gallery, "added": stamp(k.added)}
                     for k in rt.keys]}
