"""One fetch of a chunk across processes: two VMs streaming one version, or a pull of a streaming version.

Within a process, the stream's single flight (imgtool/stream/hydration.py) already makes concurrent
misses on one chunk share one fetch. Between processes this module does, with two things in the store's
tmp/ folder:
- claims: a POSIX record lock on one byte of tmp/fetching.lock, the byte at the chunk's BLAKE3 prefix.
  A process claims a chunk before it asks the registry for it and lets the claim go once the chunk is
  spooled. The kernel drops the claims of a process that dies, kill -9 included, so a claim never
  outlives its fetcher and needs no cleaning.
- the streaming mark: every stream holds a shared flock on tmp/streaming.lock while it runs, so a pull
  knows whether anyone may wait for its chunks; only then does it spool them.
- the spool: tmp/.tmp-fetched/<blake3 hex>, a fetched chunk's zstd frame after its raw length (8 bytes,
  big-endian), written before the claim goes and deleted once the chunk is in a pack. It is a cache,
  never data: every read checks the chunk's BLAKE3 again, a bad or missing file only means fetching
  the chunk, and gc clears what a crash left (a `.tmp-` name). Files are written and the folder is
  cleared under the store's shared lock, so gc (exclusive) never removes it under a writer.

A fetcher takes what is spooled, claims the rest without waiting, fetches what it claimed in one
request, spools it, lets its claims go, and only then waits for the chunks others claimed: it never
waits while it holds a claim, so two fetchers cannot wait for each other. A chunk still nowhere after
its claim went (its fetcher failed or died) is claimed and fetched again, a bounded number of rounds.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgtool.errors import Corrupt
from imgtool.remote.fetch import Verified
from imgtool.remote.format import IndexEntry
from store import codec
from store.atomic import TMP_PREFIX, makedirs
from store.repo import Store

LOCK_FILE = "fetching.lock"
STREAMING_FILE = "streaming.lock"
SPOOL = f"{TMP_PREFIX}fetched"
ROUNDS = 3  # claim rounds before a chunk whose fetchers keep failing is fetched without a claim
_LENGTH = 8

# Chunks of one pack, by offset -> verified. The flag says some of the chunks asked for came otherwise
# (spooled, or fetched by another process): ask for ranges then, never the whole pack, or their bytes
# would come twice.
FetchPack = Callable[[list[IndexEntry], bool], list[Verified]]


@dataclass
class Got:
    fetched: list[Verified] = field(default_factory=list)  # asked of the registry by this process
    taken: list[Verified] = field(default_factory=list)  # fetched by another process, read from the spool
    stored: list[bytes] = field(default_factory=list)  # already in a pack of the store


# One descriptor per lock file per process: closing any descriptor of a file drops every POSIX lock the
# process holds on it, so the file is opened once and never closed.
_descriptors: dict[Path, int] = {}
_descriptors_lock = threading.Lock()


def _open(path: Path) -> int:
    makedirs(path.parent)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _descriptor(path: Path) -> int:
    with _descriptors_lock:
        fd = _descriptors.get(path)
        if fd is None:
            fd = _descriptors[path] = _open(path)
        return fd


def _byte(digest: bytes) -> int:
    return int.from_bytes(digest[:7], "big")  # below 2**56: a valid lock offset; a collision only waits


class Claims:
    """This process's claims on chunks, and the spool, of one store. Callers single-flight each chunk
    within the process first: POSIX locks do not exclude threads of the one process that holds them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.fd = _descriptor(store.layout.tmp / LOCK_FILE)
        self.spool_dir = store.layout.tmp / SPOOL
        self.mark: int | None = None

    def streaming(self) -> None:
        """Mark this process as streaming into the store until `close`: pulls then spool for it."""
        if self.mark is None:
            self.mark = _open(self.store.layout.tmp / STREAMING_FILE)
            fcntl.flock(self.mark, fcntl.LOCK_SH)

    def streaming_here(self) -> bool:
        """Whether a stream runs into this store now (this process's own included)."""
        fd = _open(self.store.layout.tmp / STREAMING_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            return True
        finally:
            os.close(fd)  # closing drops the lock, if this took it
        return False

    def close(self) -> None:
        if self.mark is not None:
            os.close(self.mark)
            self.mark = None

    def try_claim(self, digest: bytes) -> bool:
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _byte(digest))
        except (BlockingIOError, PermissionError):
            return False
        return True

    def wait(self, digest: bytes) -> None:
        """Until no other process claims `digest` (its fetch ended, or its process died)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, _byte(digest))
        self.release(digest)

    def release(self, digest: bytes) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, _byte(digest))

    def spooled(self, entry: IndexEntry) -> Verified | None:
        """The chunk from the spool, checked; None when it is not there or not right."""
        path = self.spool_dir / entry.blake3.hex()
        try:
            data = path.read_bytes()
        except OSError:
            return None
        rawlen, frame = int.from_bytes(data[:_LENGTH], "big"), data[_LENGTH:]
        try:
            if rawlen != entry.rawlen:
                raise Corrupt("a spooled chunk has the wrong length")
            codec.decompress(frame, rawlen, entry.blake3, what=entry.blake3.hex()[:16])
        except (Corrupt, ValueError):
            path.unlink(missing_ok=True)
            return None
        return entry.blake3, frame, rawlen

    def spool(self, chunks: list[Verified]) -> None:
        """Spool checked chunks for other processes. Best effort: a full disk only means they fetch."""
        try:
            with self.store.reading():
                makedirs(self.spool_dir)
                for raw, frame, rawlen in chunks:
                    self._spool_one(raw, frame, rawlen)
        except OSError:
            return

    def _spool_one(self, raw: bytes, frame: bytes, rawlen: int) -> None:
        target = self.spool_dir / raw.hex()
        if target.exists():
            return
        tmp = self.spool_dir / f"{TMP_PREFIX}{raw.hex()}.{os.getpid()}.{threading.get_ident()}"
        try:
            with open(tmp, "wb") as out:  # no fsync: after a crash the spool is checked, never trusted
                out.write(rawlen.to_bytes(_LENGTH, "big") + frame)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def forget(self, digests: list[bytes]) -> None:
        """Drop the spooled copies of chunks now in a pack."""
        for digest in digests:
            (self.spool_dir / digest.hex()).unlink(missing_ok=True)


def fetch(claims: Claims, entries: list[IndexEntry], fetch_pack: FetchPack,
          in_store: Callable[[bytes], bool], *, spool: bool = True) -> Got:
    """Every one of `entries` (chunks of one pack, each once): from the spool, the store, or the registry,
    each fetched by one process at a time. `spool`: leave what this fetches in the spool for others."""
    got = Got()
    todo = entries
    for round_ in range(ROUNDS + 1):
        todo = _take_spooled(claims, todo, got)
        if not todo:
            break
        if round_ == ROUNDS:  # its fetchers kept failing: fetch it without a claim (a duplicate at worst)
            _fetch_and_spool(claims, fetch_pack(sorted(todo, key=_offset), len(todo) < len(entries)), got, spool)
            break
        claimed = {e.blake3 for e in todo if claims.try_claim(e.blake3)}
        theirs = [e for e in todo if e.blake3 not in claimed]
        try:
            # One may have landed between the look and the claim.
            mine = _take_spooled(claims, [e for e in todo if e.blake3 in claimed], got)
            if mine:
                _fetch_and_spool(claims, fetch_pack(sorted(mine, key=_offset), len(mine) < len(entries)), got, spool)
        finally:
            for digest in claimed:
                claims.release(digest)
        todo = _after_their_fetch(claims, theirs, in_store, got)
    return got


def _offset(entry: IndexEntry) -> int:
    return entry.offset


def _take_spooled(claims: Claims, entries: list[IndexEntry], got: Got) -> list[IndexEntry]:
    left = []
    for entry in entries:
        found = claims.spooled(entry)
        if found is None:
            left.append(entry)
        else:
            got.taken.append(found)
    return left


def _fetch_and_spool(claims: Claims, fetched: list[Verified], got: Got, spool: bool) -> None:
    if spool:
        claims.spool(fetched)
    got.fetched.extend(fetched)


def _after_their_fetch(claims: Claims, theirs: list[IndexEntry], in_store: Callable[[bytes], bool],
                       got: Got) -> list[IndexEntry]:
    """Wait for other processes' fetches of `theirs`; what is still nowhere goes round again."""
    left = []
    for entry in theirs:
        claims.wait(entry.blake3)
        found = claims.spooled(entry)
        if found is not None:
            got.taken.append(found)
        elif in_store(entry.blake3):
            got.stored.append(entry.blake3)
        else:
            left.append(entry)
    return left
