"""Revocation statements: "this version, under this name, is revoked, because …", signed (pure module).

The same keys, envelope and pre-authentication encoding as signatures (signatures.py), with their
own payload type so a signature can never be read as a revocation nor the other way round::

  {"critical": {"identity": {registry, repository, gallery, definition, version},
                "image": {"manifest-digest": "sha256:…"},
                "reason": "CVE-2026-1234 in openssl",
                "type": "imgtool version revocation v1"},
   "optional": {"revoked-at": "2026-12-01T09:00:00Z"}}

The statement is attached to the version's manifest as an OCI referrer whose artifact type and
single layer are REVOCATION_MEDIA_TYPE. A statement counts only when a key the remote trusts (for
that gallery) signed it, for the very name and manifest digest it is attached to.

A revocation is lifted by a second statement of the same shape with type LIFT_TYPE and `lifted-at`
instead of `revoked-at` (the reason says why it is fit again). Statements are never removed from a
remote; of the verified ones about a version, the latest decides, and at the same second a
revocation wins over a lift (fail closed). So revoke, lift and revoke again each need a new
statement, and hiding the newest statement can only bring back an older decision that a trusted
key signed.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from imgtool import strict
from imgtool.clock import parse_time, stamp
from imgtool.errors import Corrupt, InvalidArgument
from imgtool.oci import media
from imgtool.oci.descriptor import canonical
from imgtool.trust.keys import ALGORITHM, KEY_ID, SigningKey
from imgtool.trust.policy import TrustedKey
from imgtool.trust.signatures import MAX_ENVELOPE, MAX_PAYLOAD, SignedName, pae, read_statement

REVOCATION_MEDIA_TYPE = media.REVOCATION
PAYLOAD_TYPE = media.REVOCATION_PAYLOAD
REVOCATION_TYPE = "imgtool version revocation v1"
LIFT_TYPE = "imgtool version revocation lift v1"
TIME_FIELD = {REVOCATION_TYPE: "revoked-at", LIFT_TYPE: "lifted-at"}
MAX_REASON = 1024


@dataclass(frozen=True)
class Revoked:
    """A verified statement."""

    reason: str
    revoked_at: str  # when the statement was made (for a lift: when it was lifted)
    key_id: str
    lifted: bool = False  # a lift: the version is fit again as of revoked_at

    def supersedes(self, other: Revoked) -> bool:
        """Whether this statement decides over `other`: the later one; a revocation at the same second."""
        return (self.revoked_at, not self.lifted) > (other.revoked_at, not other.lifted)


def payload_for(name: SignedName, manifest_digest: str, reason: str, *, revoked_at: datetime,
                lift: bool = False) -> bytes:
    if not strict.SHA256.fullmatch(manifest_digest):
        raise InvalidArgument(f"'{manifest_digest}' is not a sha256 manifest digest", hint="sha256:<64 hex digits>")
    if not reason.strip() or len(reason) > MAX_REASON:
        raise InvalidArgument("a revocation (or its lifting) needs a reason of 1-1024 characters", hint="say why")
    kind = LIFT_TYPE if lift else REVOCATION_TYPE
    return canonical({"critical": {"identity": name.as_json(), "image": {"manifest-digest": manifest_digest},
                                   "reason": reason, "type": kind},
                      "optional": {TIME_FIELD[kind]: stamp(revoked_at)}})


def sign(key: SigningKey, name: SignedName, manifest_digest: str, reason: str, *, revoked_at: datetime,
         lift: bool = False) -> bytes:
    """The envelope bytes revoking `manifest_digest` as `name` (lifting its revocation, with `lift`), signed
    with `key`; `revoked_at` is the statement's time."""
    if key.public.expires is not None and key.public.expires <= revoked_at:
        raise InvalidArgument(f"signing key {key.name} expired on {stamp(key.public.expires)}",
                              hint="sign the revocation with a key that has not expired")
    payload = payload_for(name, manifest_digest, reason, revoked_at=revoked_at, lift=lift)
    signature = key.sign(pae(PAYLOAD_TYPE, payload))
    return canonical({"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
                      "keyid": key.public.key_id, "algorithm": ALGORITHM,
                      "sig": base64.b64encode(signature).decode()})


def judge(data: bytes, *, keys: Sequence[TrustedKey], name: SignedName, manifest_digest: str,
          when: datetime) -> Revoked | str:
    """The verified statement, or why it does not count (never raises for what a remote sends)."""
    what = "a revocation statement"
    try:
        obj = strict.load_object(data, what=what, limit=MAX_ENVELOPE)
        strict.exact(obj, what=what, required={"payloadType", "payload", "keyid", "algorithm", "sig"})
        strict.equal(obj, "payloadType", PAYLOAD_TYPE, what=what)
        strict.equal(obj, "algorithm", ALGORITHM, what=what)
        payload = strict.b64(obj, "payload", what=what, limit=MAX_PAYLOAD)
        signature = strict.b64(obj, "sig", what=what, limit=64)
        key_id = strict.text(obj, "keyid", what=what, pattern=KEY_ID)
    except Corrupt as exc:
        return f"malformed ({exc.message})"
    applicable = [k for k in keys if k.key_id == key_id and k.applies_to(name.gallery)]
    if not applicable:
        return f"signed by {key_id[:19]}…, not a key trusted for {name.gallery} on this remote"
    key = applicable[0].key
    if len(signature) != 64 or not key.verify(signature, pae(PAYLOAD_TYPE, payload)):
        return "bad signature (it does not match its payload)"
    if key.expires is not None and when >= key.expires:
        return f"signed by a key that expired on {stamp(key.expires)}"
    try:
        claimed, digest, reason, revoked_at, kind = _read(payload)
    except Corrupt as exc:
        return f"malformed payload ({exc.message})"
    verb = "lifts" if kind == LIFT_TYPE else "revokes"
    if digest != manifest_digest:
        return f"{verb} another manifest ({digest[:19]}…)"
    if claimed != name:
        return f"{verb} another name ({claimed})"
    return Revoked(reason, revoked_at, key_id, lifted=kind == LIFT_TYPE)


def latest(found: Sequence[Revoked]) -> Revoked | None:
    """The verified statement that decides (see the module doc), or None when there is none."""
    decided: Revoked | None = None
    for statement in found:
        if decided is None or statement.supersedes(decided):
            decided = statement
    return decided


def _read(payload: bytes) -> tuple[SignedName, str, str, str, str]:
    what = "a revocation payload"
    crit = strict.load_object(payload, what=what, limit=MAX_PAYLOAD).get("critical")
    kind = crit.get("type") if isinstance(crit, dict) else None
    if kind not in TIME_FIELD:
        raise strict.refuse(what, "its type is neither a revocation nor a lift")
    at = TIME_FIELD[str(kind)]
    found = read_statement(payload, what=what, kind=str(kind), critical=frozenset({"reason"}),
                           optional=frozenset({at}))
    reason = strict.text(found.critical, "reason", what=what)
    if not reason.strip() or len(reason) > MAX_REASON:
        raise strict.refuse(what, "the reason must be 1-1024 characters")
    try:
        when = stamp(parse_time(strict.text(found.optional, at, what=what), at))
    except InvalidArgument as exc:
        raise strict.refuse(what, exc.message) from exc
    return found.name, found.manifest_digest, reason, when, str(kind)
