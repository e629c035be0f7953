"""Pull a version from a remote into the local store: only chunks the store lacks travel.

Order (a kill at any point leaves no local name pointing at missing data):
1. resolve the tag, read the manifest (its digest is what provenance records) and the config;
   the records inside are parsed strictly and must name what was asked for; then the caller's
   `check` (pin, revocations, trust policy: imgtool.flows.sharing) judges it, cache hits too, and a
   refusal leaves nothing stored;
2. check the local side: an existing definition must agree on identity, an existing version with the
   same disks means there is nothing to do;
3. read every disk's chunk index; it must rebuild exactly the disk manifest the version names;
4. fetch the chunks the store lacks (whole packs or Range GETs, several packs at a time), each
   verified (sha256 of whole blobs while streaming, BLAKE3 of every chunk), written with the store's
   pack writer (chunks -> pack index), under the store's shared lock;
5. disk manifests -> definition record -> version record -> what the check keeps (the signature set);
6. names last: gallery and definition when missing, then the version (create-only).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from imgtool.clock import stamp
from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused
from imgtool.formats import DEFAULT_MAX_VIRTUAL_SIZE
from imgtool.formats._common import LIMIT_ENV
from imgtool.gallery import galleries
from imgtool.gallery.galleries import DEFINITIONS, GALLERIES, VERSIONS, gallery_lock
from imgtool.gallery.model import Definition, Gallery, ImageVersion, PulledFrom
from imgtool.gallery.versions import passed_over, why_nothing
from imgtool.home import Home
from imgtool.names import DefinitionRef, ImageRef, parse_definition_ref, parse_image_ref, ref_fields
from imgtool.oci.target import Fetched, Target, read_all
from imgtool.remote import catalog, fetch, shared_fetch
from imgtool.remote import format as fmt
from imgtool.remote.format import DiskIndex, IndexEntry, VersionManifest
from imgtool.remote.knowledge import load_index
from imgtool.remote.remotes import Remote
from imgtool.vocab import PullStatus
from store import canonical
from store import digest as store_digest
from store.disks import DiskManifest
from store.progress import Progress, announce_total

WORKERS = 3
IDENTITY = ("publisher", "offer", "sku", "os_type", "os_state", "architecture", "firmware")


@dataclass(frozen=True)
class Checking:
    """The trust check's view: the manifest and records are read and match the name; nothing is stored."""

    target: Target
    repository: str
    tag: str
    fetched: Fetched
    version: ImageVersion


@dataclass(frozen=True)
class Checked:
    """The check's answer (it raises to refuse): warnings to show, and what to store with the version."""

    warnings: tuple[str, ...] = ()
    keep: Callable[[ImageVersion], None] | None = None


CheckHook = Callable[[Checking], Checked]


@dataclass(frozen=True)
class Judged:
    """A remote version read and judged (names, digests, sizes, trust): what `pull` and a stream act on."""

    repo: str
    tag: str
    local: DefinitionRef
    fetched: Fetched
    manifest: VersionManifest
    version: ImageVersion
    definition: Definition
    definition_obj: dict[str, Any]
    gallery: Gallery | None
    checked: Checked
    passed_over: list[str] = field(default_factory=list)  # warnings: newer versions `latest` passed over


@dataclass
class PullResult:
    name: str
    remote: str
    repository: str
    tag: str
    manifest: str
    status: PullStatus  # pulled | present
    chunks_fetched: int = 0
    chunks_joined: int = 0  # fetched meanwhile by a stream of the same version on this machine
    bytes_received: int = 0
    packs_whole: int = 0
    range_requests: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        return {**ref_fields(body.pop("name")), **body}


def resolve_tag(target: Target, repo: str, ref: ImageRef, remote_name: str,
                screen: catalog.Screen | None = None) -> tuple[str, list[str]]:
    """The tag `ref` names there, and warnings: a newer version that latest passed over for trust."""
    if ref.version is not None:
        return str(ref.version), []
    found = catalog.remote_versions(target, repo)
    refused = screen(repo, found) if screen else {}
    chosen, verdicts = catalog.resolve(found, refused=refused)
    where = f"{remote_name}:{ref.definition_ref}"
    if not found:
        raise NotFound(f"{where} has no versions: the remote has nothing at {repo}",
                       hint=f"check the spelling of {ref.definition_ref}; a push creates it "
                            f"(imgtool push {ref.definition_ref} {remote_name})")
    if chosen is None:
        raise NotFound(f"{where}@latest picks nothing: {why_nothing(verdicts)}",
                       hint=f"see imgtool remote versions {where} --explain, or name a version (@X.Y.Z)")
    warnings = [f"{where}@latest is {chosen}, not the newer {v.version}: {v.reason.removeprefix('dropped: ')}"
                for v in passed_over(verdicts) if str(v.version) in refused]
    return str(chosen), warnings


def _manifest(target: Target, repo: str, tag: str, where: str) -> Fetched:
    try:
        return target.get_manifest(repo, tag)
    except NotFound:
        raise NotFound(f"{where}@{tag} does not exist (the remote has no tag {tag} at {repo})",
                       hint=f"list its versions: imgtool remote versions {where}") from None


def _records(target: Target, repo: str, manifest: VersionManifest,
             what: str) -> tuple[ImageVersion, Definition, dict[str, Any], Gallery | None]:
    data = read_all(target.get_blob(repo, manifest.config.digest, size=manifest.config.size))
    version_obj, definition_obj, gallery_obj = fmt.parse_config(data, f"config of {what}")
    try:
        version = ImageVersion.from_json(version_obj)
        definition = Definition.from_json(definition_obj)
        gallery = Gallery.from_json(gallery_obj) if gallery_obj is not None else None
        for named in [version.definition_record, *(d.digest for d in version.disks)]:
            store_digest.parse(named)  # before any of them reaches a path
    except (KeyError, TypeError, ValueError, AttributeError, InvalidArgument) as exc:
        raise Corrupt(f"the records in {what} are malformed: {str(exc)[:120]}",
                      hint="the remote version is damaged; ask its publisher to push it again") from None
    return version, definition, definition_obj, gallery


def _check_names(version: ImageVersion, definition: Definition, remote: Remote, repo: str, tag: str) -> None:
    """A version served under another name or tag is refused: the records must name this repository."""
    parse_image_ref(f"{version.gallery}/{version.definition}@{version.version}")
    if version.version != tag or fmt.repository(remote.prefix, version.gallery, version.definition) != repo:
        raise Refused(f"{remote.name}:{repo}:{tag} holds version {version.gallery}/{version.definition}@"
                      f"{version.version}", hint="the remote serves a version under a name that is not its own")
    if (definition.gallery, definition.name) != (version.gallery, version.definition):
        raise Corrupt(f"the definition record in {repo}:{tag} is not the version's", hint="the remote is damaged")
    if not version.disks or version.os_state != definition.os_state:
        raise Corrupt(f"the version record in {repo}:{tag} is inconsistent", hint="the remote is damaged")


def _check_sizes(version: ImageVersion, what: str) -> None:
    """A disk larger than capture would accept is refused before anything moves (4 TiB unless
    IMGTOOL_MAX_VIRTUAL_SIZE says otherwise): a remote must not make this machine build an absurd base."""
    raw = os.environ.get(LIMIT_ENV, "")
    limit = int(raw) if raw.strip().isdigit() else DEFAULT_MAX_VIRTUAL_SIZE
    for disk in version.disks:
        if not 0 < disk.virtual_size <= limit:
            raise Refused(f"{what} declares a disk of {disk.virtual_size} bytes, above the virtual size limit "
                          f"of {limit} bytes", hint=f"set {LIMIT_ENV} (bytes) to pull larger disks")


def check_identity(local: Definition, remote: Definition, local_ref: DefinitionRef) -> None:
    mine, theirs = local.to_json(), remote.to_json()
    differ = [k for k in IDENTITY if mine.get(k) != theirs.get(k)]
    if differ:
        listed = ", ".join(f"{k} {mine.get(k)!r} here, {theirs.get(k)!r} there" for k in differ)
        raise Refused(f"the local definition {local_ref} is not the remote one: {listed}",
                      hint="pull into another definition with --as GALLERY/DEFINITION")


class Puller:
    def __init__(self, home: Home, remote: Remote, target: Target, *, progress: Progress | None = None,
                 workers: int = WORKERS, check: CheckHook | None = None, screen: catalog.Screen | None = None) -> None:
        self.home, self.remote, self.target = home, remote, target
        self.progress, self.workers, self.check, self.screen = progress, workers, check, screen

    def judge(self, text: str, *, as_ref: str | None = None) -> Judged:
        """Read the version's manifest and records and judge them (names, sizes, trust); nothing is stored.

        Streaming (imgtool/stream) calls this before it serves a byte, so a streamed version is judged
        exactly as a pulled one."""
        ref = parse_image_ref(text)
        repo = fmt.repository(self.remote.prefix, ref.gallery, ref.definition)
        tag, passed = resolve_tag(self.target, repo, ref, self.remote.name, self.screen)
        local = parse_definition_ref(as_ref) if as_ref else ref.definition_ref
        fetched = _manifest(self.target, repo, tag, f"{self.remote.name}:{ref.definition_ref}")
        what = f"{self.remote.name}:{repo}:{tag}"
        manifest = fmt.parse_manifest(fetched.data, fetched.digest, what)
        version, definition, definition_obj, gallery = _records(self.target, repo, manifest, what)
        _check_names(version, definition, self.remote, repo, tag)
        if store_digest.of(canonical.dumps(definition_obj)) != store_digest.full(version.definition_record):
            raise Corrupt(f"the definition record in {what} is not the one the version names",
                          hint="the remote version is damaged; ask its publisher to push it again")
        _check_sizes(version, what)
        if version.revocation is not None:  # its publisher revoked it and pushed that (push --with-revocation)
            raise Refused(f"{self.remote.name}:{ref.definition_ref}@{tag} is revoked by its publisher: "
                          f"{version.revocation.reason} (since {version.revocation.when})",
                          hint=f"nothing was pulled; pick another version: imgtool remote versions "
                               f"{self.remote.name}:{ref.definition_ref}")
        # Trust is judged before anything moves, and on every pull, cache hits included.
        checked = self.check(Checking(self.target, repo, tag, fetched, version)) if self.check else Checked()
        return Judged(repo, tag, local, fetched, manifest, version, definition, definition_obj, gallery, checked,
                      passed)

    def pull(self, text: str, *, as_ref: str | None = None) -> PullResult:
        judged = self.judge(text, as_ref=as_ref)
        repo, tag, local, fetched, version = judged.repo, judged.tag, judged.local, judged.fetched, judged.version
        result = PullResult(f"{local}@{tag}", self.remote.name, repo, tag, fetched.digest, PullStatus.PULLED,
                            warnings=[*judged.passed_over, *judged.checked.warnings])
        checked = judged.checked
        if self._present(local, version, judged.definition):
            result.status = PullStatus.PRESENT
            if checked.keep is not None:  # signatures verified now are kept for a copy that lacks them
                with self.home.store.writing():
                    checked.keep(replace(version, gallery=local.gallery, definition=local.definition))
            return result
        store = self.home.store
        with store.writing():
            self._fetch_disks(repo, judged.manifest, version, result)
            store.put_manifest(judged.definition_obj)
            pulled = self._local_version(version, local, repo, tag, fetched.digest)
            record = store.put_manifest(pulled.to_json())
            if checked.keep is not None:
                checked.keep(pulled)  # the signatures, named before the version is
            self._name(local, judged.definition, judged.gallery, tag, record)
        return result

    def disks(self, repo: str, manifest: VersionManifest,
              version: ImageVersion) -> list[tuple[DiskIndex, DiskManifest]]:
        """Every disk's chunk index, each proven to rebuild exactly the disk manifest the version names."""
        if len(manifest.indexes) != len(version.disks):
            raise Corrupt(f"{repo}:{version.version} has {len(manifest.indexes)} indexes for "
                          f"{len(version.disks)} disks", hint="the remote version is damaged")
        cache = self.home.cache / "remote-indexes"
        indexes = [load_index(self.target, repo, manifest, n, cache) for n in range(len(manifest.indexes))]
        return [(index, self._disk_manifest(disk.digest, disk.virtual_size, index))
                for disk, index in zip(version.disks, indexes, strict=True)]

    def _present(self, local: DefinitionRef, version: ImageVersion, definition: Definition) -> bool:
        store = self.home.store
        defined = store.get_name(DEFINITIONS, local.gallery, local.definition)
        if defined is not None:
            check_identity(Definition.from_json(store.get_manifest(defined)), definition, local)
        existing = store.get_name(VERSIONS, local.gallery, local.definition, version.version)
        if existing is None:
            return False
        have = ImageVersion.from_json(store.get_manifest(existing))
        if [(d.lun, d.digest) for d in have.disks] != [(d.lun, d.digest) for d in version.disks]:
            raise AlreadyExists(f"version {local}@{version.version} already exists here with other disks",
                                hint="pull into another definition with --as GALLERY/DEFINITION")
        return True

    def _fetch_disks(self, repo: str, manifest: VersionManifest, version: ImageVersion, result: PullResult) -> None:
        store = self.home.store
        found = self.disks(repo, manifest, version)
        before = self.target.stats.bytes_received
        self._fetch_missing(repo, manifest, [index for index, _ in found], result)
        result.bytes_received = self.target.stats.bytes_received - before
        for _, manifest_of_disk in found:  # after their chunks: write order chunks -> disk manifest
            store.put_manifest(manifest_of_disk.to_json())

    def _disk_manifest(self, expected: str, virtual_size: int, index: DiskIndex) -> DiskManifest:
        if index.chunk_size != self.home.store.config.chunk_size:
            raise Refused(f"the remote disk uses {index.chunk_size}-byte chunks, this store "
                          f"{self.home.store.config.chunk_size}",
                          hint="pull into a store created with the same chunk size")
        disk = DiskManifest(index.virtual_size, index.chunk_size, {e.chunk: e.blake3.hex() for e in index.entries})
        if index.virtual_size != virtual_size or \
                store_digest.of(canonical.dumps(disk.to_json())) != store_digest.full(expected):
            raise Corrupt(f"a chunk index does not rebuild disk {expected[:23]}",
                          hint="the remote version is damaged; ask its publisher to push it again")
        return disk

    def _fetch_missing(self, repo: str, manifest: VersionManifest, indexes: list[DiskIndex],
                       result: PullResult) -> None:
        store = self.home.store
        writer = store.pack_writer()
        wanted: dict[str, dict[bytes, IndexEntry]] = {}
        for index in indexes:
            for entry in index.entries:
                if not writer.has(entry.blake3):
                    wanted.setdefault(entry.pack, {}).setdefault(entry.blake3, entry)
        plans = [fetch.PackPlan(pack, manifest.packs[pack].size, sorted(found.values(), key=lambda e: e.offset))
                 for pack, found in wanted.items()]
        announce_total(self.progress, sum(p.wanted for p in plans))
        window: deque[Future[shared_fetch.Got]] = deque()
        clen = {e.blake3: e.clen for found in wanted.values() for e in found.values()}
        claims = shared_fetch.Claims(store)
        joining = claims.streaming_here()  # a stream may wait for our chunks: spool them for it

        def drain(limit: int) -> None:
            while len(window) > limit:
                got = window.popleft().result()
                for chunks, joined in ((got.fetched, False), (got.taken, True)):
                    for raw, frame, rawlen in chunks:
                        if writer.add(raw, frame, rawlen) and not joined:
                            result.chunks_fetched += 1
                        if self.progress is not None:
                            self.progress(len(frame))
                result.chunks_joined += len(got.taken) + len(got.stored)
                if self.progress is not None:
                    self.progress(sum(clen[d] for d in got.stored))

        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="pull") as pool:
                for plan in plans:
                    if plan.whole:
                        result.packs_whole += 1
                    else:
                        result.range_requests += len(plan.ranges())
                    window.append(pool.submit(self._fetch_plan, claims, repo, plan, joining))
                    drain(self.workers)
                drain(0)
        except KeyboardInterrupt:
            self._keep_fetched(window)
            raise
        writer.flush()

    def _fetch_plan(self, claims: shared_fetch.Claims, repo: str, plan: fetch.PackPlan,
                    joining: bool) -> shared_fetch.Got:
        """One pack's chunks; a chunk a stream on this machine is fetching is waited for and taken from it."""
        def fetch_pack(wanted: list[IndexEntry], ranges_only: bool) -> list[fetch.Verified]:
            return fetch.fetch_pack(self.target, repo, fetch.PackPlan(plan.pack, plan.size, wanted, ranges_only))

        return shared_fetch.fetch(claims, plan.entries, fetch_pack, lambda d: d in self.home.store.reload_index(),
                                  spool=joining)

    def _keep_fetched(self, window: deque[Future[shared_fetch.Got]]) -> None:
        """Ctrl-C: store the chunks of every pack that arrived whole (verified), so that the same pull run
        again fetches only the rest. A fresh writer: the interrupted one may have been stopped halfway
        through queueing a frame; what it had queued is dropped, its packs already being written finish."""
        writer = self.home.store.pack_writer()
        for future in window:
            if future.done() and not future.cancelled() and future.exception() is None:
                got = future.result()
                for raw, frame, rawlen in got.fetched + got.taken:
                    writer.add(raw, frame, rawlen)
        writer.flush()

    def _local_version(self, version: ImageVersion, local: DefinitionRef, repo: str, tag: str,
                       manifest_digest: str) -> ImageVersion:
        origin = PulledFrom(self.remote.name, self.remote.url, repo, tag, manifest_digest, stamp())
        provenance = {**version.provenance, "pulled_from": origin.to_json()}
        return replace(version, gallery=local.gallery, definition=local.definition, provenance=provenance)

    def _name(self, local: DefinitionRef, definition: Definition, gallery: Gallery | None, tag: str,
              record: str) -> None:
        store = self.home.store
        if store.get_name(GALLERIES, local.gallery) is None:
            description = gallery.description if gallery is not None and gallery.name == local.gallery else ""
            with contextlib.suppress(AlreadyExists):  # a concurrent pull made it
                galleries.create_gallery(self.home, local.gallery, description)
        if store.get_name(DEFINITIONS, local.gallery, local.definition) is None:
            mine = replace(definition, gallery=local.gallery, name=local.definition, created=stamp(), updated=None)
            try:
                galleries.create_definition(self.home, mine)
            except AlreadyExists:
                defined = store.get_name(DEFINITIONS, local.gallery, local.definition)
                if defined is None:
                    raise  # the identifier is used by another definition of that gallery
        with gallery_lock(self.home, local.gallery):
            defined = store.get_name(DEFINITIONS, local.gallery, local.definition)
            if defined is None:
                raise NotFound(f"definition {local} was deleted during the pull", hint="run the pull again")
            check_identity(Definition.from_json(store.get_manifest(defined)), definition, local)
            try:
                store.set_name(VERSIONS, local.gallery, local.definition, tag, target=record, create_only=True)
            except AlreadyExists:
                raise AlreadyExists(f"version {local}@{tag} appeared during the pull",
                                    hint=f"compare it with imgtool version show {local}@{tag}") from None


def pull(home: Home, remote: Remote, target: Target, text: str, *, as_ref: str | None = None,
         progress: Progress | None = None, workers: int = WORKERS, check: CheckHook | None = None,
         screen: catalog.Screen | None = None) -> PullResult:
    return Puller(home, remote, target, progress=progress, workers=workers, check=check,
                  screen=screen).pull(text, as_ref=as_ref)
