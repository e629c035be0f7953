"""A remote version's chunks, local or on their way: served from the store, else fetched, checked, kept.

Hydration is a pull done in another order: the chunks are the ones `pull` would fetch (the disks'
chunk indexes, already proven to rebuild the version's disk manifests), fetched by the same code
(`remote/fetch.py`: Range GETs into packs, neighbours merged, BLAKE3 of every chunk checked before it
is handed on) and stored with the store's pack writer. What differs is the order (what the guest
reads first) and that chunks become usable before the version has a local name.

Contract:
- `chunk(digest)` returns bytes whose BLAKE3 is `digest`, or raises (RemoteFailed, Corrupt, ...);
  a chunk that fails its check is never returned nor stored.
- One fetch per chunk at a time (single flight): concurrent misses on a chunk wait for the same fetch,
  and across processes (another VM streaming the version, a pull of it) through
  imgtool/remote/shared_fetch.py: a chunk another process is fetching is waited for and taken from its
  spool, never asked of the registry twice.
- Fetched chunks are held in memory (at most about FLUSH_BYTES plus what is in flight) until `keep`
  writes them into a pack; `keep` then renews the leases, under the store's shared lock, so no gc
  runs between a chunk landing in a pack and a lease naming it.
- `prefetch` fetches a boot profile's chunks (imgtool/vm/boot_profile.py) in its order ahead of the
  guest, a bounded number of requests at once; the guest's own misses never wait behind it.
- A keep that fails (a full disk) puts its frames back: nothing fetched is lost; `full` says so until
  a keep succeeds, and the fetching threads fetch nothing more meanwhile.
- A lease is a disk manifest listing the chunks of that disk present in the store, named under
  names/stream-leases/<vm>/<disk>: a valid partial disk, so gc keeps its chunks and verify finds
  it complete. The stream's owner deletes the leases once the version has its own name.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imgtool.oci.target import Target
from imgtool.remote import fetch, shared_fetch
from imgtool.remote.format import DiskIndex, IndexEntry
from imgtool.vm.record import STREAM_LEASES as LEASES
from store import codec
from store.disks import DiskManifest
from store.errors import Corrupt, StorageFull
from store.packs import ChunkIndex, PackReader, PackWriter, decode_chunk
from store.repo import Store

FLUSH_BYTES = 16 << 20  # raw bytes held in memory before they are written into a pack
READ_AHEAD = 8  # chunks after a demand miss fetched with it (same pack, merged into one Range GET)
# With a boot profile the prefetcher is already fetching what comes next; read-ahead only makes a miss's
# request longer (Debian, 17 Mbit/s, one run each: SSH after 78.4 s without it, 86.8 s with 8).
PROFILED_READ_AHEAD = 0
BATCH_BYTES = 4 << 20  # compressed bytes per background request
PREFETCH_BYTES = 1 << 20  # compressed bytes of a boot profile's next chunks asked for at once
PREFETCH_IN_FLIGHT = 2  # prefetch requests at once (demand misses are not queued behind them)
FETCH_LOG = 4096  # the first chunks fetched, in order, kept in the counters (what the tests and bench read)


@dataclass(frozen=True)
class Disk:
    label: str  # "os" or "lunN": the NBD export name and the lease's key
    index: DiskIndex
    manifest: DiskManifest


@dataclass
class Counters:
    total_bytes: int = 0  # raw bytes of the version's distinct non-zero chunks
    local_at_start: int = 0
    fetched_bytes: int = 0  # raw bytes of chunks fetched by this process
    fetched_chunks: int = 0
    joined_bytes: int = 0  # raw bytes of chunks another process fetched (its spool, or its pack)
    first_fetch: float | None = None
    last_fetch: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    missing: set[bytes] = field(default_factory=set)
    profile_chunks: int = 0  # chunks the boot profile asked for that were missing when the stream began
    prefetched_chunks: int = 0
    fetch_log: list[bytes] = field(default_factory=list)  # the first FETCH_LOG chunks fetched, in order

    @property
    def local_bytes(self) -> int:
        return self.local_at_start + self.fetched_bytes + self.joined_bytes


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class Hydration:
    """The chunks of one version's disks, for the block server and the background hydrator."""

    def __init__(self, store: Store, target: Target, repo: str, pack_sizes: dict[str, int], disks: list[Disk],
                 *, lease_owner: str, clock: Callable[[], float] = time.monotonic,
                 wanted: Callable[[], bool] = lambda: True) -> None:
        self.store, self.target, self.repo, self.pack_sizes = store, target, repo, pack_sizes
        self.wanted = wanted  # false once the VM is deleted: its leases then go instead of being renewed
        self.disks, self.lease_owner, self.clock = disks, lease_owner, clock
        self.entries: dict[bytes, IndexEntry] = {}
        for disk in disks:
            for entry in disk.index.entries:
                self.entries.setdefault(entry.blake3, entry)
        self.lock = threading.Lock()
        self.keep_lock = threading.Lock()  # one pack writer at a time (hydrator, prefetchers, supervisor)
        self.full = threading.Event()  # the last keep found the store's disk full
        self.memory: dict[bytes, bytes] = {}  # fetched, checked, not yet in a pack of the store
        self.frames: list[fetch.Verified] = []  # the same chunks' frames, for `keep`
        self.flights: dict[bytes, _Flight] = {}
        self.index = ChunkIndex.load(store.layout)
        self.reader = PackReader(store.layout)
        self.claims = shared_fetch.Claims(store)
        self.claims.streaming()
        self.counters = Counters(total_bytes=sum(e.rawlen for e in self.entries.values()))
        self.counters.missing = {d for d in self.entries if d not in self.index}
        self.counters.local_at_start = sum(self.entries[d].rawlen for d in self.entries
                                           if d not in self.counters.missing)

    # -- reading -------------------------------------------------------------------------------

    def chunk(self, digest: bytes, ahead: list[bytes] | None = None) -> bytes:
        """The chunk's bytes, from memory, the store, or the remote (with `ahead` in the same request)."""
        data = self._cached(digest)
        if data is None:
            self.ensure([digest, *(ahead or [])], wait=digest)
            data = self._cached(digest)
        if data is None:
            raise Corrupt(f"chunk {digest.hex()[:16]} vanished after it was fetched", hint="retry the read")
        return data

    def _cached(self, digest: bytes) -> bytes | None:
        with self.lock:
            data = self.memory.get(digest)
        if data is not None:
            return data
        location = self.index.get(digest)
        if location is None:
            return None
        try:
            return decode_chunk(self.reader.read(location), location, digest)
        except (FileNotFoundError, Corrupt):
            # A gc may have repacked the pack since the index was read: read the indexes again once.
            with self.store.reading():
                self.index = ChunkIndex.load(self.store.layout)
                location = self.index.get(digest)
                return None if location is None else decode_chunk(self.reader.read(location), location, digest)

    def is_local(self, digest: bytes) -> bool:
        with self.lock:
            if digest in self.memory:
                return True
        return digest in self.index

    # -- fetching ------------------------------------------------------------------------------

    def ensure(self, wanted: list[bytes], *, wait: bytes | None = None) -> None:
        """Fetch those of `wanted` that are neither local nor on their way, as one pack request (all of
        one pack: the first missing one's); wait for `wait`'s fetch, raising what it raised."""
        mine: list[IndexEntry] = []
        flights: dict[bytes, _Flight] = {}
        with self.lock:
            for digest in wanted:
                if digest in self.memory or digest in self.index:
                    continue
                flight = self.flights.get(digest)
                if flight is None:
                    entry = self.entries[digest]
                    if mine and entry.pack != mine[0].pack:
                        continue  # another pack: another request, another time
                    flight = self.flights[digest] = _Flight()
                    mine.append(entry)
                flights[digest] = flight
        if mine:
            self._fly(mine, [flights[e.blake3] for e in mine])
        flight = flights.get(wait) if wait is not None else None
        if flight is not None:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error

    def _fly(self, entries: list[IndexEntry], flights: list[_Flight]) -> None:
        try:
            pack = entries[0].pack
            size = self.pack_sizes[pack]

            def fetch_pack(wanted: list[IndexEntry], ranges_only: bool) -> list[fetch.Verified]:
                plan = fetch.PackPlan(pack, size, wanted, ranges_only)
                return fetch.fetch_pack(self.target, self.repo, plan)  # every chunk's BLAKE3 checked there

            got = shared_fetch.fetch(self.claims, entries, fetch_pack, self._in_store)
            self._arrived(got)
        except BaseException as exc:
            for flight in flights:
                flight.error = exc
            with self.lock:
                self.counters.last_error, self.counters.last_error_at = str(exc), self.clock()
        finally:
            with self.lock:
                for entry in entries:
                    self.flights.pop(entry.blake3, None)
            for flight in flights:
                flight.done.set()

    def _arrived(self, got: shared_fetch.Got) -> None:
        decode = [(raw, frame, rawlen, codec.decompress(frame, rawlen, raw, what=raw.hex()[:16]), own)
                  for own, chunks in ((True, got.fetched), (False, got.taken)) for raw, frame, rawlen in chunks]
        now = self.clock()
        with self.lock:
            for raw, frame, rawlen, data, own in decode:
                self.memory[raw] = data
                self.frames.append((raw, frame, rawlen))
                if raw not in self.counters.missing:
                    continue
                self.counters.missing.discard(raw)
                if own:
                    self.counters.fetched_bytes += rawlen
                    self.counters.fetched_chunks += 1
                    if len(self.counters.fetch_log) < FETCH_LOG:
                        self.counters.fetch_log.append(raw)
                else:
                    self.counters.joined_bytes += rawlen
            for raw in got.stored:
                if raw in self.counters.missing:
                    self.counters.missing.discard(raw)
                    self.counters.joined_bytes += self.entries[raw].rawlen
            if got.fetched:
                self.counters.first_fetch = self.counters.first_fetch or now
                self.counters.last_fetch = now

    def _in_store(self, digest: bytes) -> bool:
        """Whether another process has put `digest` into a pack since this one read the indexes."""
        with self.store.reading():
            self.index = ChunkIndex.load(self.store.layout)
            return digest in self.index

    def pending_bytes(self) -> int:
        with self.lock:
            return sum(len(d) for d in self.memory.values())

    # -- background ----------------------------------------------------------------------------

    def batches(self) -> list[list[bytes]]:
        """What is still missing, as requests: by pack, in pack order, at most BATCH_BYTES each."""
        by_pack: dict[str, list[IndexEntry]] = {}
        with self.lock:
            missing = [self.entries[d] for d in self.counters.missing]
        for entry in missing:
            by_pack.setdefault(entry.pack, []).append(entry)
        found: list[list[bytes]] = []
        for entries in by_pack.values():
            batch: list[bytes] = []
            size = 0
            for entry in sorted(entries, key=lambda e: e.offset):
                if batch and size + entry.clen > BATCH_BYTES:
                    found.append(batch)
                    batch, size = [], 0
                batch.append(entry.blake3)
                size += entry.clen
            if batch:
                found.append(batch)
        return found

    # -- prefetch ------------------------------------------------------------------------------

    def prefetch_plan(self, order: list[bytes], request_bytes: int = PREFETCH_BYTES) -> list[list[bytes]]:
        """A boot profile's chunks (digests, first touch first) still missing, as requests: the next
        `request_bytes` of the order, split by pack (each becomes merged Range GETs into that pack)."""
        requests: list[list[bytes]] = []
        with self.lock:
            todo = [d for d in dict.fromkeys(order) if d in self.counters.missing]
            self.counters.profile_chunks = self.counters.profile_chunks or len(todo)
        start = 0
        while start < len(todo):
            size, end = 0, start
            while end < len(todo) and (end == start or size + self.entries[todo[end]].clen <= request_bytes):
                size += self.entries[todo[end]].clen
                end += 1
            by_pack: dict[str, list[bytes]] = {}
            for digest in todo[start:end]:
                by_pack.setdefault(self.entries[digest].pack, []).append(digest)
            requests.extend(by_pack.values())
            start = end
        return requests

    def prefetched(self, count: int) -> None:
        with self.lock:
            self.counters.prefetched_chunks += count

    def complete(self) -> bool:
        with self.lock:
            return not self.counters.missing and not self.frames

    # -- keeping -------------------------------------------------------------------------------

    def keep(self) -> int:
        """Write the fetched chunks into a pack and renew the leases; returns the chunks written."""
        with self.keep_lock:
            try:
                kept = self._keep()
            except (StorageFull, OSError) as exc:
                if disk_full(exc):
                    self.full.set()
                raise
            self.full.clear()
            return kept

    def flush_or_wait(self, stopping: threading.Event) -> None:
        """For the fetching threads: write what they fetched once FLUSH_BYTES are held; while the store's
        disk is full fetch nothing more (it would only pile up in memory) until a keep succeeds again
        (the supervisor retries it and pauses the VM meanwhile)."""
        if self.pending_bytes() >= FLUSH_BYTES and not self.full.is_set():
            with contextlib.suppress(StorageFull, OSError):  # a full disk sets `full`; others: the next keep
                self.keep()
        while self.full.is_set() and not stopping.is_set():
            stopping.wait(1.0)

    def _keep(self) -> int:
        with self.lock:
            frames, self.frames = self.frames, []
        try:
            return self._write(frames)
        except BaseException:
            with self.lock:  # nothing fetched is lost: the next keep writes these again
                self.frames = frames + self.frames
            raise

    def _write(self, frames: list[fetch.Verified]) -> int:
        with self.store.writing():
            # The indexes again: another stream or a pull may have stored some of these meanwhile.
            self.index = ChunkIndex.load(self.store.layout)
            writer = PackWriter(self.store.layout, self.index)
            for raw, frame, rawlen in frames:
                writer.add(raw, frame, rawlen)
            writer.flush()
            if self.wanted():
                self._renew_leases()
            else:
                self.drop_leases()
        with self.lock:
            for raw, _frame, _rawlen in frames:
                self.memory.pop(raw, None)
        self.claims.forget([raw for raw, _frame, _rawlen in frames])
        return len(frames)

    def _renew_leases(self) -> None:
        for disk in self.disks:
            present = {i: h for i, h in disk.manifest.chunks.items() if bytes.fromhex(h) in self.index}
            lease = DiskManifest(disk.manifest.virtual_size, disk.manifest.chunk_size, present)
            self.store.set_name(LEASES, self.lease_owner, disk.label, target=self.store.put_manifest(lease.to_json()))

    def drop_leases(self) -> None:
        for disk in self.disks:
            self.store.delete_name(LEASES, self.lease_owner, disk.label)

    def close(self) -> None:
        self.reader.__exit__()
        self.claims.close()


Report = Callable[[BaseException, float], None]  # a failed prefetch request, and the seconds until it is retried


def prefetch(hydration: Hydration, order: list[bytes], *, stopping: threading.Event, on_error: Report,
             in_flight: int = PREFETCH_IN_FLIGHT, request_bytes: int = PREFETCH_BYTES) -> None:
    """Fetch the missing chunks of `order` (a boot profile's, first touch first) ahead of the guest:
    requests in the order's order, `in_flight` at a time; a failed one is retried with backoff until
    `stopping` is set. A demand miss does not wait for these: it asks for its chunk at once."""
    requests = iter(hydration.prefetch_plan(order, request_bytes))
    take_lock = threading.Lock()

    def take() -> list[bytes] | None:
        with take_lock:
            return None if stopping.is_set() else next(requests, None)

    def work() -> None:
        delay = 1.0
        while (batch := take()) is not None:
            while not stopping.is_set():
                try:
                    hydration.ensure(batch, wait=batch[0])
                    hydration.prefetched(len(batch))
                    delay = 1.0
                    break
                except Exception as exc:
                    on_error(exc, delay)
                    stopping.wait(delay)
                    delay = min(delay * 2, 30.0)
            hydration.flush_or_wait(stopping)

    workers = [threading.Thread(target=work, name=f"prefetch-{n}", daemon=True) for n in range(in_flight)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()


def disk_full(exc: BaseException) -> bool:
    """Whether `exc` says the store's filesystem has no room (or quota) left."""
    return isinstance(exc, StorageFull) or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))


class DiskSource:
    """One disk as a block source for the NBD server: chunks not listed are zeros."""

    def __init__(self, hydration: Hydration, disk: Disk, *, read_ahead: int = READ_AHEAD) -> None:
        self.hydration, self.read_ahead = hydration, read_ahead
        self.chunk_size = disk.manifest.chunk_size
        self._size = disk.manifest.virtual_size
        self.chunks = {i: bytes.fromhex(h) for i, h in disk.manifest.chunks.items()}

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray(length)
        size = self.chunk_size
        end = offset + length
        last = (end - 1) // size if length else -1
        for number in range(offset // size, last + 1):
            digest = self.chunks.get(number)
            if digest is None:
                continue  # a zero chunk: never stored, never fetched
            # A miss asks with it for the rest of this read (which needs them next) and the read-ahead: one
            # request, not a round trip per chunk.
            upto = max(last + 1, number + 1 + self.read_ahead)
            ahead = [d for d in (self.chunks.get(n) for n in range(number + 1, upto)) if d]
            data = self.hydration.chunk(digest, ahead)
            start = number * size
            low, high = max(offset, start), min(end, start + len(data))
            out[low - offset:high - offset] = data[low - start:high - start]
        return bytes(out)
