"""The store facade: chunks in packs, manifests by digest, names.

The on-disk format and the invariants this code keeps (write order, locks,
what a reader may rely on while gc runs) are specified in docs/STORE-FORMAT.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from store import atomic, canonical, digest, lock
from store.canonical import JsonObject
from store.disks import DiskManifest
from store.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound
from store.layout import Layout
from store.packs import ChunkIndex, PackWriter

STORE_FORMAT = 1
DEFAULT_CHUNK_SIZE = 128 << 10  # chosen by measurement: docs/DESIGN.md, scripts/chunk-size-experiment


@dataclass(frozen=True)
class StoreConfig:
    format: int
    chunk_size: int


class Store:
    """One content-addressed store rooted at a directory."""

    def __init__(self, root: Path, config: StoreConfig) -> None:
        self.layout = Layout(root)
        self.config = config
        self._index: ChunkIndex | None = None

    # -- opening -------------------------------------------------------------

    @classmethod
    def open(cls, root: Path, *, create: bool = True, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Store:
        """Open (and, when allowed, initialise) the store at `root`.

        Raises NotFound when there is no store and `create` is false, Corrupt
        when store.json is unreadable, and InvalidArgument for an unknown format.
        """
        layout = Layout(root)
        if not layout.config.exists():
            if not create:
                raise NotFound(f"no store at {root}", hint="create one with any writing command")
            _initialise(layout, chunk_size)
        return cls(root, _read_config(layout))

    # -- locking -------------------------------------------------------------

    def writing(self, *, timeout: float = lock.DEFAULT_TIMEOUT) -> contextlib.AbstractContextManager[None]:
        """The shared lock, for anything that adds to the store."""
        return self._locked(exclusive=False, timeout=timeout)

    def reading(self, *, timeout: float = lock.DEFAULT_TIMEOUT) -> contextlib.AbstractContextManager[None]:
        """The shared lock, for readers of packs: no gc or optimize deletes a pack while it is held."""
        return self._locked(exclusive=False, timeout=timeout, reader=True)

    def exclusive(self, *, timeout: float = lock.DEFAULT_TIMEOUT) -> contextlib.AbstractContextManager[None]:
        """The store to itself: gc and optimize, which delete packs."""
        return self._locked(exclusive=True, timeout=timeout)

    @contextlib.contextmanager
    def _locked(self, *, exclusive: bool, timeout: float, reader: bool = False) -> Iterator[None]:
        fresh = not lock.holding(self.layout.locks)
        with lock.held(self.layout.locks, exclusive=exclusive, timeout=timeout, reader=reader):
            if fresh:  # a gc may have run since the index was loaded: load it again when it is next used
                self._index = None
            yield

    # -- chunks --------------------------------------------------------------

    @property
    def index(self) -> ChunkIndex:
        if self._index is None:
            self._index = ChunkIndex.load(self.layout)
        return self._index

    def reload_index(self) -> ChunkIndex:
        self._index = None
        return self.index

    def pack_writer(self) -> PackWriter:
        return PackWriter(self.layout, self.index)

    # -- manifests -----------------------------------------------------------

    def put_manifest(self, obj: JsonObject) -> str:
        """Store a manifest; returns its digest (`blake3:<hex>`). Idempotent."""
        data = canonical.dumps(obj)
        hex_digest = digest.hex_of(data)
        atomic.write_once(self.layout.manifest(hex_digest), [data])
        return digest.PREFIX + hex_digest

    def get_manifest(self, ref: str) -> JsonObject:
        """Read and verify a manifest by digest."""
        hex_digest = digest.parse(ref)
        path = self.layout.manifest(hex_digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"manifest {hex_digest[:16]} is not in the store",
                           hint="check the digest; a verify of the store shows what it affects") from None
        if digest.hex_of(data) != hex_digest:
            raise Corrupt(f"manifest {hex_digest[:16]} does not match its digest",
                          hint="a verify of the store shows what it affects")
        return canonical.loads(data, what=f"manifest {hex_digest[:16]}")

    def has_manifest(self, ref: str) -> bool:
        return self.layout.manifest(digest.parse(ref)).exists()

    def get_disk(self, ref: str) -> DiskManifest:
        return DiskManifest.from_json(self.get_manifest(ref), what=f"disk {digest.parse(ref)[:16]}")

    # -- names ---------------------------------------------------------------

    def get_name(self, namespace: str, *key: str) -> str | None:
        path = self.layout.name(namespace, *key)
        try:
            text = path.read_text().strip()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return digest.full(text)

    def set_name(self, namespace: str, *key: str, target: str, create_only: bool = False) -> None:
        """Point a name at a manifest that is already stored.

        With `create_only`, races are decided by the filesystem: exactly one
        concurrent creator wins (returns normally), the others get AlreadyExists.
        """
        full = digest.full(target)
        if not self.has_manifest(full):
            raise InvalidArgument(f"refusing to name {full[:23]}: it is not stored",
                                  hint="names are set only after their content; this is a bug in the caller")
        path = self.layout.name(namespace, *key)
        data = (full + "\n").encode()
        old = self.get_name(namespace, *key)
        if create_only:
            if not atomic.create(path, data):
                raise AlreadyExists(f"name {'/'.join((namespace, *key))} already exists")
        else:
            atomic.replace(path, data)
        self._log("set", namespace, key, old, full)

    def delete_name(self, namespace: str, *key: str) -> str | None:
        path = self.layout.name(namespace, *key)
        old = self.get_name(namespace, *key)
        with atomic.translated(path.name):
            path.unlink(missing_ok=True)
        if old is not None:
            self._log("delete", namespace, key, old, None)
        return old

    def list_names(self, namespace: str, *prefix: str) -> list[tuple[tuple[str, ...], str]]:
        """Every (key, digest) under namespace/prefix, sorted by key."""
        base = self.layout.name(namespace, *prefix)
        if not base.is_dir():
            return []
        found: list[tuple[tuple[str, ...], str]] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(base).parts
            for name in files:
                if name.startswith(atomic.TMP_PREFIX):
                    continue
                value = self.get_name(namespace, *prefix, *rel, name)
                if value is not None:
                    found.append(((*rel, name), value))
        return sorted(found)

    def all_names(self) -> list[tuple[tuple[str, ...], str]]:
        """Every name in every namespace, as ((namespace, *key), digest)."""
        if not self.layout.names.is_dir():
            return []
        found: list[tuple[tuple[str, ...], str]] = []
        for namespace in sorted(p.name for p in self.layout.names.iterdir() if p.is_dir()):
            found.extend(((namespace, *key), value) for key, value in self.list_names(namespace))
        return found

    def _log(self, action: str, namespace: str, key: tuple[str, ...], old: str | None, new: str | None) -> None:
        # Name history: an append-only audit trail; O_APPEND writes of one line are atomic enough here.
        # Best effort: the name change before it is the commit point, so a full disk here must not
        # report a change that happened as failed (nor stop gc from freeing space).
        entry = {"time": int(time.time()), "action": action, "name": "/".join((namespace, *key)),
                 "old": old, "new": new}
        with contextlib.suppress(OSError):
            atomic.makedirs(self.layout.log)
            fd = os.open(self.layout.log / "names.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with open(fd, "a") as handle:
                handle.write(json.dumps(entry, sort_keys=True) + "\n")


def _initialise(layout: Layout, chunk_size: int) -> None:
    layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(layout.root, 0o700)
    for directory in layout.directories():
        directory.mkdir(mode=0o700, exist_ok=True)
    config = {"format": STORE_FORMAT, "chunk_size": chunk_size, "created": int(time.time())}
    atomic.create(layout.config, canonical.dumps(config), mode=0o444)


def _read_config(layout: Layout) -> StoreConfig:
    try:
        obj = canonical.loads(layout.config.read_bytes(), what="store.json")
    except OSError as exc:
        raise Corrupt(f"cannot read {layout.config}: {exc.strerror}", hint="check permissions") from exc
    fmt = obj.get("format")
    if fmt != STORE_FORMAT:
        raise InvalidArgument(
            f"the store at {layout.root} has format {fmt!r}; this release reads format {STORE_FORMAT}",
            hint="use the release that wrote it, or upgrade to one that reads it",
        )
    chunk_size = obj.get("chunk_size")
    if not isinstance(chunk_size, int) or chunk_size < 4096 or chunk_size & (chunk_size - 1):
        raise Corrupt(f"store.json has an invalid chunk_size {chunk_size!r}", hint="restore store.json")
    return StoreConfig(fmt, chunk_size)
