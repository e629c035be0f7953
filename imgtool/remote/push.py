"""Push versions to a remote: only chunks the remote lacks travel, the tag comes last.

Order for one version (a kill at any point leaves the remote without a tag that names missing data):
1. learn what the repository and its siblings hold (their indexes);
2. mount packs that only siblings hold (no bytes move); a refused mount makes those chunks "new";
3. upload new packs (a chunk's own zstd frame copied from the local store; one out of an optimized
   span compressed again on its own), several at a time, skipping any a killed run already uploaded
   (packs are deterministic: the same new chunks in the same order give the same bytes, hence the
   same sha256);
4. upload the per-disk chunk indexes and the config;
5. put the manifest by digest, call the hook (signing), then put the tag.
A second push of the same version finds the tag with the same disks and settings and sends nothing.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from imgtool.errors import NotFound, Refused
from imgtool.gallery.galleries import DEFINITIONS, GALLERIES, VERSIONS
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.names import check_name, parse_image_ref, ref_fields
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor, sha256_of
from imgtool.oci.target import Target, read_all
from imgtool.remote import format as fmt
from imgtool.remote.format import DiskIndex, IndexEntry
from imgtool.remote.knowledge import Known, learn
from imgtool.remote.remotes import Remote
from imgtool.vocab import PushStatus
from store.disks import DiskManifest
from store.packs import PackReader
from store.progress import Progress, announce_total
from store.repo import Store

PACK_TARGET = 32 << 20  # "tens of MiB": few requests per GiB, small enough to hold a few in memory
WORKERS = 3


@dataclass(frozen=True)
class Pushed:
    """The hook's view of a version whose manifest is on the remote (by digest) but not yet tagged."""

    target: Target
    repository: str
    tag: str
    manifest: Descriptor
    version: ImageVersion


PushHook = Callable[[Pushed], None]
Member = tuple[bytes, int, int, int]  # a chunk in a pack being built: raw digest, offset, clen, rawlen


@dataclass
class PushResult:
    name: str
    repository: str
    tag: str
    manifest: str
    status: PushStatus
    packs_uploaded: int = 0
    packs_mounted: int = 0
    bytes_uploaded: int = 0
    chunks_new: int = 0
    signed_by: list[str] = field(default_factory=list)  # key ids whose signatures this push attached

    def to_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        return {**ref_fields(body.pop("name")), **body}


def versions_of(home: Home, source: str) -> list[tuple[ImageVersion, str]]:
    """SRC (`G`, `G/D`, `G/D@X.Y.Z` or `G/D@latest`) as (version, record digest) pairs, lowest version first."""
    store = home.store
    if "/" not in source:
        gallery = check_name(source, "gallery")
        if store.get_name(GALLERIES, gallery) is None:
            raise NotFound(f"gallery '{gallery}' does not exist", hint="list galleries with imgtool gallery list")
        keys = [(gallery, *key) for key, _ in store.list_names(VERSIONS, gallery)]
    else:
        ref = parse_image_ref(source)
        if store.get_name(DEFINITIONS, ref.gallery, ref.definition) is None:
            raise NotFound(f"definition '{ref.definition_ref}' does not exist",
                           hint=f"list them with imgtool definition list {ref.gallery}")
        if "@" in source:  # @X.Y.Z is that version, @latest the one latest picks here (never all of them)
            keys = [(ref.gallery, ref.definition, get_version(home, ref)[0].version)]
        else:
            keys = [(ref.gallery, ref.definition, key[0]) for key, _ in
                    store.list_names(VERSIONS, ref.gallery, ref.definition)]
    found = []
    for gallery, definition, version in keys:
        record = store.get_name(VERSIONS, gallery, definition, version)
        if record is None:
            raise NotFound(f"version {gallery}/{definition}@{version} does not exist",
                           hint=f"list versions with imgtool version list {gallery}/{definition}")
        found.append((ImageVersion.from_json(store.get_manifest(record)), record))
    return sorted(found, key=lambda p: (p[0].gallery, p[0].definition, tuple(map(int, p[0].version.split(".")))))


def manifest_annotations(version: ImageVersion, definition: dict[str, Any]) -> dict[str, str]:
    notes = {
        "org.opencontainers.image.title": f"{version.gallery}/{version.definition}",
        "org.opencontainers.image.version": version.version,
        "org.opencontainers.image.created": version.published,
        "org.imgtool.gallery": version.gallery,
        "org.imgtool.definition": version.definition,
        "org.imgtool.identifier": "/".join(str(definition.get(k, "")) for k in ("publisher", "offer", "sku")),
        "org.imgtool.os-state": version.os_state,
        "org.imgtool.exclude-from-latest": "true" if version.exclude_from_latest else "false",
    }
    if definition.get("description"):
        notes["org.opencontainers.image.description"] = str(definition["description"])[:512]
    if version.end_of_life:
        notes["org.imgtool.end-of-life"] = version.end_of_life
    if version.check is not None:  # the remote's latest obeys boot checks too (imgtool.remote.catalog)
        notes["org.imgtool.boot-check"] = version.check.state
    if version.revocation is not None:  # pushed --with-revocation: readers need not fetch the config to see it
        notes["org.imgtool.revoked"] = version.revocation.reason[:512]
    return notes


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The version record as it travels: what a consumer needs to know of each disk's source (its kind,
    format, name and digest), never the publisher's local paths. Idempotent (a pulled record is pushed
    on as it came)."""
    disks = [{**d, "source": _public_source(d.get("source"), d.get("digest"))} for d in record.get("disks") or []]
    body = {**record, "disks": disks}
    provenance = record.get("provenance")
    if isinstance(provenance, dict) and "os_disk" in provenance:  # the OS disk's source again
        os_digest = disks[0].get("digest") if disks and isinstance(disks[0], dict) else None
        body["provenance"] = {**provenance, "os_disk": _public_source(provenance["os_disk"], os_digest)}
    audit = record.get("audit")
    if isinstance(audit, dict) and isinstance(audit.get("source"), str):
        body["audit"] = {**audit, "source": _public_text(audit["source"])}
    return body


def _public_text(text: str) -> str:
    """A source as typed: a file keeps its base name; vm:, snapshot:, blake3: and G/D@V have no path."""
    named = text.startswith(("vm:", "snapshot:", "blake3:")) or re.fullmatch(r"[^/@]+/[^/@]+@[^/]+", text)
    return text if named else PurePath(text).name


def _public_source(source: Any, digest: Any) -> Any:
    if isinstance(source, str):
        return _public_text(source)
    if not isinstance(source, dict):
        return source
    kept = {k: v for k, v in source.items() if k != "path"}
    if source.get("kind") == "file":
        path = source.get("path")
        kept = {**kept, "name": PurePath(path).name if isinstance(path, str) else kept.get("name"), "digest": digest}
    return kept


def _settings(record: dict[str, Any]) -> tuple[Any, ...]:
    check = record.get("check")
    revocation = record.get("revocation")
    return (record.get("exclude_from_latest"), record.get("end_of_life"),
            record.get("block_deletion_before_end_of_life"), check.get("state") if isinstance(check, dict) else None,
            revocation.get("reason") if isinstance(revocation, dict) else None)


def _disks(record: dict[str, Any]) -> list[tuple[Any, Any]]:
    return [(d.get("lun"), d.get("digest")) for d in record.get("disks") or [] if isinstance(d, dict)]


class Pusher:
    """Pushes versions of one home to one remote; reuses what it learned between versions."""

    def __init__(self, home: Home, remote: Remote, target: Target, *, progress: Progress | None = None,
                 workers: int = WORKERS, hook: PushHook | None = None, pack_target: int = PACK_TARGET) -> None:
        self.home, self.remote, self.target = home, remote, target
        self.progress, self.workers, self.hook, self.pack_target = progress, workers, hook, pack_target
        self.known: dict[str, Known] = {}

    @property
    def store(self) -> Store:
        return self.home.store

    def repository(self, version: ImageVersion) -> str:
        return fmt.repository(self.remote.prefix, version.gallery, version.definition)

    def siblings(self, version: ImageVersion) -> list[str]:
        own = self.repository(version)
        others = [fmt.repository(self.remote.prefix, version.gallery, key[0])
                  for key, _ in self.store.list_names(DEFINITIONS, version.gallery)]
        return [own, *(r for r in others if r != own)]

    def push(self, version: ImageVersion) -> PushResult:
        repo, tag = self.repository(version), version.version
        name = f"{version.gallery}/{version.definition}@{version.version}"
        record = public_record(version.to_json())
        definition = self.store.get_manifest(version.definition_record)
        existing = self._existing(repo, tag)
        if existing is not None:
            remote_record, manifest = existing
            if _disks(remote_record) != _disks(record):
                raise Refused(f"{self.remote.name} already has {repo}:{tag} with other disks",
                              hint="versions are immutable: publish a higher version and push that")
            if _settings(remote_record) == _settings(record):
                return PushResult(name, repo, tag, manifest.digest, PushStatus.PRESENT)
            layers = [*manifest.indexes, *manifest.packs.values()]
            digest = self._put(version, repo, tag, record, definition, layers)
            return PushResult(name, repo, tag, digest, PushStatus.UPDATED)
        self._check_same_definition(version, repo, definition)
        result = PushResult(name, repo, tag, "", PushStatus.PUSHED)
        with self.store.writing():
            layers = self._upload_content(version, repo, result)
            result.manifest = self._put(version, repo, tag, record, definition, layers)
        return result

    def _check_same_definition(self, version: ImageVersion, repo: str, definition: dict[str, Any]) -> None:
        """A repository holds one definition: refuse to add versions of another one (same names in
        two homes) to it, judged by the identity annotations of the versions already there."""
        mine = manifest_annotations(version, definition)
        for (where, tag), manifest in self._learn(version).manifests.items():
            theirs = manifest.annotations
            if where == repo and any(theirs.get(k) != mine[k] for k in ("org.imgtool.identifier",
                                                                       "org.imgtool.os-state")):
                raise Refused(f"{self.remote.name}:{repo} holds another definition ({tag} is "
                              f"{theirs.get('org.imgtool.identifier')}, {theirs.get('org.imgtool.os-state')})",
                              hint="push under another remote prefix, or into a definition of another name")

    def _existing(self, repo: str, tag: str) -> tuple[dict[str, Any], fmt.VersionManifest] | None:
        if tag not in self.target.tags(repo):
            return None
        fetched = self.target.get_manifest(repo, tag)
        manifest = fmt.parse_manifest(fetched.data, fetched.digest, f"{self.remote.name}:{repo}:{tag}")
        config = read_all(self.target.get_blob(repo, manifest.config.digest, size=manifest.config.size))
        remote_record, _definition, _gallery = fmt.parse_config(config, f"config of {repo}:{tag}")
        return remote_record, manifest

    def _learn(self, version: ImageVersion) -> Known:
        repo = self.repository(version)
        if repo not in self.known:
            self.known[repo] = learn(self.target, self.siblings(version), self.home.cache / "remote-indexes")
        return self.known[repo]

    def _upload_content(self, version: ImageVersion, repo: str, result: PushResult) -> list[Descriptor]:
        known = self._learn(version)
        disks = [self.store.get_disk(d.digest) for d in version.disks]
        located = self._mount_siblings(repo, known, disks, result)
        new: list[bytes] = []
        for disk in disks:
            for index in sorted(disk.chunks):
                raw = bytes.fromhex(disk.chunks[index])
                if raw not in located and raw not in new:
                    located[raw] = None
                    new.append(raw)
        located.update(self._upload_packs(repo, new, result))
        indexes: list[Descriptor] = []
        packs: dict[str, Descriptor] = {}
        for disk in disks:
            entries = []
            for index in sorted(disk.chunks):
                entry = located[bytes.fromhex(disk.chunks[index])]
                assert entry is not None
                entries.append(IndexEntry(index, entry.blake3, entry.pack, entry.offset, entry.clen, entry.rawlen))
                packs.setdefault(entry.pack, Descriptor(fmt.PACK_TYPE, entry.pack, known.pack_sizes[entry.pack]))
            data = fmt.encode_index(DiskIndex(disk.virtual_size, disk.chunk_size, entries))
            indexes.append(self._ensure_blob(repo, fmt.INDEX_TYPE, data))
        return [*indexes, *packs.values()]

    def _mount_siblings(self, repo: str, known: Known, disks: list[DiskManifest],
                        result: PushResult) -> dict[bytes, IndexEntry | None]:
        """Chunks the remote holds, located in `repo` (mounting their packs from siblings first)."""
        needed: dict[str, str] = {}  # pack -> sibling repository
        located: dict[bytes, IndexEntry | None] = {}
        for disk in disks:
            for hex_digest in disk.chunks.values():
                held = known.chunks.get(bytes.fromhex(hex_digest))
                if held is not None and held[0] != repo:
                    needed.setdefault(held[1].pack, held[0])
        mounted = {pack for pack, source in needed.items() if self.target.mount_blob(repo, pack, source)}
        result.packs_mounted += len(mounted)
        for disk in disks:
            for hex_digest in disk.chunks.values():
                raw = bytes.fromhex(hex_digest)
                held = known.chunks.get(raw)
                if held is not None and (held[0] == repo or held[1].pack in mounted):
                    located[raw] = held[1]
        for pack in mounted:  # now also in `repo`
            for raw, (source, entry) in list(known.chunks.items()):
                if entry.pack == pack and source != repo:
                    known.chunks[raw] = (repo, entry)
        return located

    def _upload_packs(self, repo: str, new: list[bytes], result: PushResult) -> dict[bytes, IndexEntry]:
        """Pack the new chunks' one-chunk frames (PackReader.chunk_frame) and upload the packs, several
        at a time. The main thread only reads frames; joining a pack, hashing it (its name) and sending it
        happen on the pool, so the last pack's hash does not wait behind the others' reads."""
        known = self.known[repo]
        located: dict[bytes, IndexEntry] = {}
        index = self.store.index
        announce_total(self.progress, sum(loc.clen for raw in new if (loc := index.get(raw)) is not None))
        window: deque[tuple[Future[tuple[str, int]], list[Member]]] = deque()

        def settle(limit: int) -> None:
            while len(window) > limit:
                future, members = window.popleft()
                pack, sent = future.result()
                size = sum(member[2] for member in members)
                for raw, offset, clen, rawlen in members:
                    located[raw] = IndexEntry(0, raw, pack, offset, clen, rawlen)
                    known.chunks.setdefault(raw, (repo, located[raw]))
                known.pack_sizes[pack] = size
                result.chunks_new += len(members)
                _count(result, sent)

        with PackReader(self.store.layout) as reader, \
                ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="push") as pool:
            frames: list[bytes] = []
            members: list[Member] = []
            size = 0
            for raw in new:
                location = index.get(raw)
                if location is None:
                    raise NotFound(f"chunk {raw.hex()[:16]} of this version is missing from the local store",
                                   hint="run imgtool verify to see which versions are affected")
                frame = reader.chunk_frame(location, raw)  # one chunk per frame, also out of an optimized span
                members.append((raw, size, len(frame), location.rawlen))
                frames.append(frame)
                size += len(frame)
                if size >= self.pack_target:
                    window.append((pool.submit(self._upload_pack, repo, frames), members))
                    frames, members, size = [], [], 0
                    settle(self.workers)
            if frames:
                window.append((pool.submit(self._upload_pack, repo, frames), members))
            settle(0)
        return located

    def _upload_pack(self, repo: str, frames: list[bytes]) -> tuple[str, int]:
        """Join frames into a pack and upload it unless the remote has it (a killed run may have sent
        it); returns (its digest, bytes sent)."""
        data = b"".join(frames)
        frames.clear()
        pack = sha256_of(data)
        sent = 0
        if self.target.blob_size(repo, pack) is None:
            self.target.put_blob(repo, pack, data)
            sent = len(data)
        if self.progress is not None:
            self.progress(len(data))
        return pack, sent

    def _ensure_blob(self, repo: str, media_type: str, data: bytes) -> Descriptor:
        descriptor = Descriptor.of(media_type, data)
        if self.target.blob_size(repo, descriptor.digest) is None:
            self.target.put_blob(repo, descriptor.digest, data)
        return descriptor

    def _put(self, version: ImageVersion, repo: str, tag: str, record: dict[str, Any], definition: dict[str, Any],
             layers: list[Descriptor]) -> str:
        gallery_ref = self.store.get_name(GALLERIES, version.gallery)
        gallery = self.store.get_manifest(gallery_ref) if gallery_ref else None
        config = self._ensure_blob(repo, fmt.CONFIG_TYPE, fmt.config_bytes(record, definition, gallery))
        data = fmt.manifest_bytes(config, layers, manifest_annotations(version, definition))
        digest = self.target.put_manifest(repo, sha256_of(data), data, media.OCI_MANIFEST)
        if self.hook is not None:
            self.hook(Pushed(self.target, repo, tag, Descriptor(media.OCI_MANIFEST, digest, len(data)), version))
        self.target.put_manifest(repo, tag, data, media.OCI_MANIFEST)
        return digest


def _count(result: PushResult, sent: int) -> None:
    if sent:
        result.packs_uploaded += 1
        result.bytes_uploaded += sent


def push(home: Home, remote: Remote, target: Target, source: str, *, progress: Progress | None = None,
         hook: PushHook | None = None, workers: int = WORKERS, with_revocation: bool = False) -> list[PushResult]:
    """Push every version SRC names that the remote lacks (lowest first, so later ones reuse packs).

    A revoked version is refused before anything moves unless `with_revocation`: its record (config)
    then carries the revocation, which every remote view honours; the caller attaches the signed
    statement (imgtool.remote.revoke.push_revocation)."""
    versions = [version for version, _record in versions_of(home, source)]
    revoked = [v.label for v in versions if v.revocation is not None]
    if revoked and not with_revocation:
        raise Refused(f"{', '.join(revoked)} {'is' if len(revoked) == 1 else 'are'} revoked here: pushing would "
                      f"offer {'it' if len(revoked) == 1 else 'them'} to others as usable",
                      hint="push with --with-revocation to send the revocation along (signed), or push the "
                           "other versions by name")
    pusher = Pusher(home, remote, target, progress=progress, workers=workers, hook=hook)
    return [pusher.push(version) for version in versions]

