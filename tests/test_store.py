"""The store on a real filesystem: chunks, packs, manifests, names, gc, verify."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from store import digest, gc
from store.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound
from store.ingest import chunk_indexes, ingest
from store.materialize import materialize
from store.repo import Store
from store.verify import verify

CHUNK = 64 << 10


def make_store(tmp_path: Path) -> Store:
    return Store.open(tmp_path / "store", chunk_size=CHUNK)


def put_disk(store: Store, content: bytes) -> str:
    def read(offset: int, length: int) -> bytes:
        return content[offset:offset + length]

    indexes = range(-(-len(content) // CHUNK))
    with store.writing():
        return ingest(store, virtual_size=len(content), read=read, indexes=indexes).digest


def names_of(store: Store) -> list[str]:
    return [value for _key, value in store.all_names()]


def disk_bytes(seed: int, size: int = 1 << 20) -> bytes:
    data = bytearray(size)
    data[0:CHUNK] = random.Random(seed).randbytes(CHUNK)
    data[3 * CHUNK:4 * CHUNK] = bytes([seed % 256]) * CHUNK
    data[5 * CHUNK + 7:5 * CHUNK + 300] = b"x" * 293
    return bytes(data)


def test_round_trip_is_exact_and_sparse(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    content = disk_bytes(7)
    ref = put_disk(store, content)
    disk = store.get_disk(ref)
    assert sorted(disk.chunks) == [0, 3, 5]  # zero chunks are not stored
    out = tmp_path / "out.raw"
    materialize(store, disk, out)
    assert out.read_bytes() == content
    assert out.stat().st_blocks * 512 < len(content)  # holes stayed holes


def test_identical_chunks_are_stored_once(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    content = disk_bytes(9)
    put_disk(store, content)
    packs_before = sorted(store.layout.packs.rglob("*.pack"))
    changed = bytearray(content)
    changed[5 * CHUNK] = 1  # touch one chunk
    with store.writing():
        result = ingest(store, virtual_size=len(changed), read=lambda o, n: bytes(changed[o:o + n]),
                        indexes=range(16))
    assert result.chunks_new == 1
    assert len(sorted(store.layout.packs.rglob("*.pack"))) == len(packs_before) + 1


def test_blobs_are_read_only_and_store_private(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ref = put_disk(store, disk_bytes(3))
    assert store.layout.root.stat().st_mode & 0o777 == 0o700
    manifest = store.layout.manifest(ref)
    assert manifest.stat().st_mode & 0o777 == 0o444
    for pack in store.layout.packs.rglob("*.pack"):
        assert pack.stat().st_mode & 0o777 == 0o444


def test_names_point_only_at_stored_manifests(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(InvalidArgument):
        store.set_name("things", "a", target="blake3:" + "0" * 64)
    ref = store.put_manifest({"kind": "note", "links": []})
    store.set_name("things", "a", target=ref, create_only=True)
    with pytest.raises(AlreadyExists):
        store.set_name("things", "a", target=ref, create_only=True)
    assert store.get_name("things", "a") == ref
    assert store.list_names("things") == [(("a",), ref)]


@pytest.mark.parametrize("bad", ["..", "a/b", "", ".hidden", "a\x00b", "x" * 200, "-flag"])
def test_name_components_are_validated(tmp_path: Path, bad: str) -> None:
    store = make_store(tmp_path)
    with pytest.raises(InvalidArgument):
        store.get_name("things", bad)


def test_digests_are_validated_before_paths(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    for bad in ["../../etc/passwd", "blake3:xyz", "A" * 64]:
        with pytest.raises(InvalidArgument):
            store.get_manifest(bad)
    with pytest.raises(NotFound):
        store.get_manifest(digest.of(b"nothing"))


def test_gc_keeps_named_content_and_frees_the_rest(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept = put_disk(store, disk_bytes(1))
    keeper = store.put_manifest({"kind": "version", "links": [kept]})
    store.set_name("versions", "v1", target=keeper)
    dropped = put_disk(store, disk_bytes(2))
    with store.exclusive():
        the_plan = gc.plan(store, names_of(store))
        assert the_plan.bytes_freed > 0
        assert store.layout.manifest(dropped) in the_plan.manifests
        gc.execute(store, the_plan)
    assert not store.has_manifest(dropped)
    out = tmp_path / "kept.raw"
    materialize(store, store.get_disk(kept), out)
    assert out.read_bytes() == disk_bytes(1)
    report = verify(store, deep=True)
    assert report.ok, report.problems
    with store.exclusive():
        assert gc.plan(store, names_of(store)).bytes_freed == 0  # nothing left to free: gc converged


def test_verify_deep_finds_a_flipped_byte_and_who_it_hits(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    ref = put_disk(store, disk_bytes(5))
    version = store.put_manifest({"kind": "version", "links": [ref]})
    store.set_name("versions", "g", "d", "1.0.0", target=version)
    assert verify(store, deep=True).ok
    pack = next(store.layout.packs.rglob("*.pack"))
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as handle:
        handle.seek(20)
        byte = handle.read(1)
        handle.seek(20)
        handle.write(bytes([byte[0] ^ 0xFF]))
    report = verify(store, deep=True)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["chunk"]
    assert report.affected == {"versions/g/d/1.0.0": [digest.parse(ref)]}
    store.reload_index()
    with pytest.raises(Corrupt):
        materialize(store, store.get_disk(ref), tmp_path / "x.raw")


def test_unknown_store_format_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    os.chmod(store.layout.config, 0o644)
    store.layout.config.write_text('{"format":99,"chunk_size":65536}')
    with pytest.raises(InvalidArgument, match="format 99"):
        Store.open(store.layout.root)


def test_chunk_indexes_cover_ranges() -> None:
    assert chunk_indexes([(0, 1), (CHUNK - 1, 2), (5 * CHUNK, CHUNK)], CHUNK) == [0, 1, 5]
    assert chunk_indexes([(10, 0)], CHUNK) == []


def test_a_damaged_index_is_skipped_and_rebuilt_from_its_pack(tmp_path: Path) -> None:
    from store.packs import ChunkIndex, rebuild_index

    store = make_store(tmp_path)
    ref = put_disk(store, disk_bytes(11))
    index_path = next(store.layout.packs.rglob("*.idx"))
    good = index_path.read_bytes()
    os.chmod(index_path, 0o644)
    index_path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    loaded = ChunkIndex.load(store.layout)
    assert loaded.damaged == [index_path] and not loaded.locations  # skipped, not fatal
    assert not verify(store).ok
    assert rebuild_index(store.layout, index_path.stem) == 3
    assert index_path.read_bytes() == good  # the same index, byte for byte
    store.reload_index()
    out = tmp_path / "out.raw"
    materialize(store, store.get_disk(ref), out)
    assert out.read_bytes() == disk_bytes(11)


def test_a_reader_holds_off_a_gc_that_would_delete_its_packs(tmp_path: Path) -> None:
    """materialize holds the store lock shared: a gc that would repack the pack being read waits
    (here: times out) instead of deleting it, and can run as soon as the reader is done."""
    import threading

    from store.errors import Locked

    store = make_store(tmp_path)
    content = bytes(random.Random(1).randbytes(CHUNK)) * 2 + random.Random(2).randbytes(30 * CHUNK)
    put_disk(store, content + random.Random(3).randbytes(4 * CHUNK))  # one pack; its last chunks die
    kept = put_disk(store, content)  # nothing new: gc would repack the one pack, deleting it
    store.set_name("versions", "v", target=store.put_manifest({"kind": "v", "links": [kept]}))
    outcomes: list[str] = []

    def collect() -> None:
        other = Store.open(store.layout.root, create=False)  # another thread, another descriptor
        try:
            with other.exclusive(timeout=0.2):
                gc.execute(other, gc.plan(other, names_of(other)))
            outcomes.append("gc ran")
        except Locked:
            outcomes.append("gc waited")

    def progress(_amount: int) -> None:
        if not outcomes:  # the first batch is written: the reader is mid-way
            thread = threading.Thread(target=collect)
            thread.start()
            thread.join()

    out = tmp_path / "out.raw"
    materialize(store, store.get_disk(kept), out, progress=progress)
    assert outcomes == ["gc waited"] and out.read_bytes() == content
    collect()
    assert outcomes == ["gc waited", "gc ran"]
    read_from = store.index.get(bytes.fromhex(store.get_disk(kept).chunks[0]))  # as loaded by the reader
    assert read_from is not None and not store.layout.pack(read_from.pack).exists()  # gc repacked it
