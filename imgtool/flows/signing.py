"""Signing and verifying as flows over imgtool.remote and imgtool.trust: sign on push, verify on pull and use.

- push: a version is signed with the key the caller passes (`push --sign KEY`) or the remote's
  default signing key (`imgtool trust signing-key REMOTE KEY`), over the name it gets there, and the
  signature is attached as a referrer before the version's tag is put. Signatures the version
  already carries (it was pulled) go along when they sign the very manifest pushed.
- pull: before any chunk moves, and on cache hits too, the remote's policy judges the version
  (`check_pull`); under `signed` nothing is fetched, stored or named unless a trusted key signed
  this manifest digest as this name. The signatures are then kept in the local store
  (`keep_pulled`): a signature set manifest named `signatures/G/D/V`, written before the version's
  own name, so gc keeps it and `version verify` / `vm new` re-check it offline.
- use: `verify_local` re-checks a pulled version offline: the stored OCI manifest hashes to the
  digest its provenance records, the stored config hashes to the digest that manifest names and
  holds the same disks and definition as the local record, the disks and their chunks are intact,
  and a signature by a key trusted *now* covers that digest and name.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field, replace
from typing import Any

from imgtool.clock import now
from imgtool.errors import Corrupt, InvalidArgument, Refused
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion, PulledFrom
from imgtool.home import Home
from imgtool.names import REPOSITORY_PATH
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor, sha256_of
from imgtool.oci.target import Fetched, Target, read_all
from imgtool.records import Fields, check_record
from imgtool.remote import format as fmt
from imgtool.remote.catalog import RemoteVersion
from imgtool.remote.remotes import Remote
from imgtool.trust import referrers
from imgtool.trust import signatures as sig
from imgtool.trust.homes import keyring, trust_store
from imgtool.trust.keys import PublicKey
from imgtool.trust.policy import ANY, SIGNED, UNSET, Acceptance
from imgtool.vocab import RemoteKind
from store import codec
from store.packs import PackReader

SIGNATURES = "signatures"  # store name namespace: signatures/GALLERY/DEFINITION/VERSION
_SET_FIELDS = {"remote", "registry", "repository", "tag", "gallery", "definition", "manifest_digest", "manifest",
               "config", "referrers"}


@dataclass(frozen=True)
class SignatureSet:
    """A pulled version's verified signatures as kept in the store (docs/STORE-FORMAT.md, Signature set)."""

    remote: str
    name: sig.SignedName
    manifest_digest: str
    manifest: bytes
    config: bytes
    referrers: tuple[referrers.Attached, ...]

    def to_record(self) -> dict[str, object]:
        return {"kind": "imgtool.signatures", "format": 1, "links": [], "remote": self.remote,
                "registry": self.name.registry, "repository": self.name.repository, "tag": self.name.version,
                "gallery": self.name.gallery, "definition": self.name.definition,
                "manifest_digest": self.manifest_digest, "manifest": _b64(self.manifest),
                "config": _b64(self.config),
                "referrers": [{"manifest": _b64(a.manifest), "envelope": _b64(a.envelope)} for a in self.referrers]}

    @classmethod
    def from_record(cls, obj: object, what: str) -> SignatureSet:
        f = Fields(check_record(obj, kind="imgtool.signatures", fmt=1, fields=_SET_FIELDS, what=what), what)
        try:
            name = sig.SignedName(f.text("registry"), f.text("repository"), f.text("gallery"), f.text("definition"),
                                  f.text("tag"))
            found = f.each("referrers", _attached_of)
            return cls(f.text("remote"), name, f.text("manifest_digest"), _unb64(f.text("manifest")),
                       _unb64(f.text("config")), found)
        except (InvalidArgument, ValueError) as exc:
            raise Corrupt(f"{what} is damaged ({str(exc)[:120]})",
                          hint="imgtool version delete the version, then pull it again") from None


def _attached_of(entry: dict[str, Any], what: str) -> referrers.Attached:
    if set(entry) != {"manifest", "envelope"}:
        raise Corrupt(f"{what} must hold exactly manifest and envelope (found {sorted(entry)[:5]})",
                      hint="imgtool version delete the version, then pull it again")
    f = Fields(entry, what)
    manifest = _unb64(f.text("manifest"))
    return referrers.Attached(sha256_of(manifest), manifest, _unb64(f.text("envelope")))


def registry_of(remote: Remote) -> str:
    """The registry part of a signed name: the host, or `oci-layout` for a folder (its path can move)."""
    return remote.host if remote.kind == RemoteKind.REGISTRY else "oci-layout"


def signed_name(remote: Remote, repository: str, version: ImageVersion) -> sig.SignedName:
    return sig.SignedName(registry_of(remote), repository, version.gallery, version.definition, version.version)


# -- push -------------------------------------------------------------------------------------------------------------

def signing_key(home: Home, remote: Remote, key_name: str | None) -> str | None:
    """The key a push or revocation signs with: the one given, else the remote's default, else none."""
    return key_name or trust_store(home).remote(remote.name).signing_key


def sign_pushed(home: Home, remote: Remote, target: Target, repository: str, subject: Descriptor,
                version: ImageVersion, *, key_name: str | None) -> list[str]:
    """Sign with `key_name` (see `signing_key`) and attach before the tag is put, and carry the signatures a
    pulled version holds for this very manifest; returns the key ids that signed (or carried signatures)."""
    signed: list[str] = []
    if key_name is not None:
        key = keyring(home).load(key_name)
        when = now()
        envelope = sig.sign(key, signed_name(remote, repository, version), subject.digest, signed_at=when)
        referrers.attach(target, repository, referrers.make(envelope, subject, key_id=key.public.key_id,
                                                            created=when))
        signed.append(key.public.key_id)
    for carried in _carried(home, version, subject.digest):
        referrers.attach(target, repository, carried)
        signed.append(sig.open_envelope(carried.envelope).key_id)
    return signed


def sign_present(home: Home, target: Target, repository: str, digest: str, name: sig.SignedName, *,
                 key_name: str | None) -> str | None:
    """A version already on the remote gets a signature by `key_name` unless that key signed it there
    already (so `push --sign` after an unsigned push signs, and a second one adds nothing); returns the
    key id when it signed now."""
    if key_name is None:
        return None
    key = keyring(home).load(key_name)
    if any(_signed_by(key.public, a, name, digest) for a in referrers.find(target, repository, digest)):
        return None
    manifest = target.get_manifest(repository, digest).data
    when = now()
    envelope_bytes = sig.sign(key, name, digest, signed_at=when)
    subject = Descriptor(media.OCI_MANIFEST, digest, len(manifest))
    referrers.attach(target, repository, referrers.make(envelope_bytes, subject, key_id=key.public.key_id,
                                                        created=when))
    return key.public.key_id


def _signed_by(key: PublicKey, attached: referrers.Attached, name: sig.SignedName, digest: str) -> bool:
    try:
        envelope = sig.open_envelope(attached.envelope)
        claim = sig.read_claim(envelope.payload)
    except Corrupt:
        return False
    return envelope.key_id == key.key_id and key.verify(envelope.signature, envelope.signed_bytes()) \
        and claim.name == name and claim.manifest_digest == digest


def _carried(home: Home, version: ImageVersion, digest: str) -> list[referrers.Attached]:
    stored = _signature_set(home, version.gallery, version.definition, version.version)
    if stored is None or stored.manifest_digest != digest:
        return []  # the manifest pushed is not the one they sign: they cannot vouch for it there
    return list(stored.referrers)


# -- pull -------------------------------------------------------------------------------------------------------------

@dataclass
class PullCheck:
    """What check_pull learnt, for keep_pulled (same pull)."""

    acceptance: Acceptance
    found: list[referrers.Attached] = field(default_factory=list)
    manifest: bytes = b""
    config: bytes = b""
    name: sig.SignedName | None = None


def check_pull(home: Home, remote: Remote, target: Target, repository: str, tag: str, fetched: Fetched,
               version: ImageVersion) -> PullCheck:
    """Judge a remote version by its remote's policy before anything of it is stored; raises Refused."""
    trust = trust_store(home)
    name = signed_name(remote, repository, version)
    if trust.remote(remote.name).policy in (ANY, UNSET):
        return PullCheck(trust.check(remote.name, name, fetched.digest, []))  # warns, or refuses when unset
    found = referrers.find(target, repository, fetched.digest)
    acceptance = trust.check(remote.name, name, fetched.digest, [a.envelope for a in found])
    manifest = fmt.parse_manifest(fetched.data, fetched.digest, f"{remote.name}:{repository}:{tag}")
    config = read_all(target.get_blob(repository, manifest.config.digest, size=manifest.config.size))
    return PullCheck(acceptance, found, fetched.data, config, name)


def keep_pulled(home: Home, remote: Remote, repository: str, tag: str, check: PullCheck,
                local: ImageVersion) -> None:
    """Store the verified signatures with the pulled version (before its name is set)."""
    if check.name is None:
        return  # policy any: nothing was verified, nothing to keep
    store = home.store
    named = store.get_name(VERSIONS, local.gallery, local.definition, local.version)
    if named is not None:  # already here: keep them only for the copy of exactly this manifest from here
        origin = ImageVersion.from_json(store.get_manifest(named)).pulled_from
        if origin is None or origin.remote != remote.name or origin.manifest != sha256_of(check.manifest):
            return
    record = SignatureSet(remote.name, replace(check.name, repository=repository, version=tag),
                          sha256_of(check.manifest), check.manifest, check.config, tuple(check.found)).to_record()
    digest = store.put_manifest(record)
    store.set_name(SIGNATURES, local.gallery, local.definition, local.version, target=digest)


def screen(home: Home, remote: Remote, target: Target, repository: str,
           found: list[RemoteVersion]) -> dict[str, str]:
    """Under policy `signed`, the versions `latest` must not pick (version -> why); {} otherwise.

    The signed name's gallery and definition come from the repository's own
    last two components, as push wrote them (the pull re-checks the records).
    """
    trust = trust_store(home)
    if trust.remote(remote.name).policy != SIGNED:
        return {}
    gallery, definition = repository.split("/")[-2:]
    refused: dict[str, str] = {}
    for version in found:
        try:
            name = sig.SignedName(registry_of(remote), repository, gallery, definition, version.version)
            envelopes = [a.envelope for a in referrers.find(target, repository, version.manifest)]
            trust.check(remote.name, name, version.manifest, envelopes)
        except (Refused, Corrupt, InvalidArgument) as exc:
            # Whole: the message is ours and short; a cut one ended mid-word in `remote versions --json`.
            refused[version.version] = "not verified: " + exc.message
    return refused


# -- use --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LocalVerdict:
    name: str
    remote: str
    manifest_digest: str
    acceptance: Acceptance


def verify_local(home: Home, ref: str, *, deep: bool = True) -> LocalVerdict | None:
    """Re-check a pulled version offline (None: it was not pulled, there is nothing to prove).

    Raises Refused when its remote's policy refuses it now, Corrupt when what is
    stored does not add up.
    """
    version, _record = get_version(home, ref)
    origin = version.pulled_from
    if origin is None:
        return None
    label = f"{version.gallery}/{version.definition}@{version.version}"
    remote_name, digest = origin.remote, origin.manifest
    trust = trust_store(home)
    if trust.remote(remote_name).policy == ANY:
        return LocalVerdict(label, remote_name, digest, trust.check(remote_name, _placeholder(origin, version),
                                                                    digest, []))
    stored = _signature_set(home, version.gallery, version.definition, version.version)
    if stored is None:
        if trust.remote(remote_name).policy == UNSET:
            trust.check(remote_name, _placeholder(origin, version), digest, [])  # refuses, naming both fixes
        raise Refused(f"{label} was pulled without signature checks, and {remote_name}'s policy is signed",
                      hint=f"imgtool pull {remote_name}:{label} (under its remote name if you pulled it --as) "
                           "verifies it and keeps its signatures")
    _check_content(home, stored, version, digest, label, deep=deep)
    acceptance = trust.check(remote_name, stored.name, digest, [a.envelope for a in stored.referrers])
    return LocalVerdict(label, remote_name, digest, acceptance)


def _placeholder(origin: PulledFrom, version: ImageVersion) -> sig.SignedName:
    """A name for messages when no signature set is stored (the policy refuses or warns before using it)."""
    repository = origin.repository or "unknown"
    return sig.SignedName("unknown", repository if REPOSITORY_PATH.fullmatch(repository) else "unknown",
                          version.gallery, version.definition, version.version)


def _check_content(home: Home, stored: SignatureSet, version: ImageVersion, digest: str, label: str, *,
                   deep: bool) -> None:
    manifest, config = stored.manifest, stored.config
    if sha256_of(manifest) != digest or stored.manifest_digest != digest:
        raise Corrupt(f"the stored manifest of {label} is not {digest[:19]}…",
                      hint=f"imgtool version delete {label}, then pull it again")
    parsed = fmt.parse_manifest(manifest, digest, f"the stored manifest of {label}")
    if sha256_of(config) != parsed.config.digest:
        raise Corrupt(f"the stored config of {label} is not the one its manifest names",
                      hint=f"imgtool version delete {label}, then pull it again")
    remote_version, _definition, _gallery = fmt.parse_config(config, f"the stored config of {label}")
    signed = ImageVersion.from_json(remote_version)
    if ([d.to_json() for d in signed.disks] != [d.to_json() for d in version.disks]
            or signed.definition_record != version.definition_record or signed.version != version.version):
        raise Corrupt(f"{label} is not the version its signatures cover (disks or definition differ)",
                      hint=f"imgtool version delete {label}, then pull it again")
    _check_disks(home, version, label, rehash=deep)


def _check_disks(home: Home, version: ImageVersion, label: str, *, rehash: bool) -> None:
    """Every disk manifest (digest-checked on read) and every chunk it names is present; with
    `rehash`, every chunk is decompressed and its BLAKE3 re-checked."""
    store = home.store
    index = store.index
    with PackReader(store.layout) as reader:
        for disk in version.disks:
            manifest = store.get_disk(disk.digest)
            for hex_digest in sorted(manifest.chunk_digests()):
                raw = bytes.fromhex(hex_digest)
                location = index.get(raw)
                if location is None:
                    raise Corrupt(f"{label}: chunk {hex_digest[:16]} is missing from the store",
                                  hint="run imgtool verify, then pull the version again")
                if rehash:
                    codec.decompress(reader.read(location), location.rawlen, raw, what=hex_digest[:16])


def _signature_set(home: Home, gallery: str, definition: str, version: str) -> SignatureSet | None:
    digest = home.store.get_name(SIGNATURES, gallery, definition, version)
    if digest is None:
        return None
    return SignatureSet.from_record(home.store.get_manifest(digest),
                                    f"the signatures of {gallery}/{definition}@{version}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
