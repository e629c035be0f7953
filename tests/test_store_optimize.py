"""optimize on a real store: cold packs rewritten as spans, read back exactly, names untouched."""

from __future__ import annotations

import os
import random
from pathlib import Path

import blake3
import pytest

from store import codec, gc, optimize
from store.errors import Corrupt
from store.materialize import materialize
from store.packs import (
    ENTRY_V1,
    HEAD,
    MAGIC_V1,
    ChunkIndex,
    Entry,
    UnknownFormat,
    decode_chunk,
    decode_index,
    encode_index,
    iter_index_files,
    iter_pack_files,
    read_frame,
    rebuild_index,
)
from store.repo import Store
from store.verify import verify
from tests.test_store import CHUNK, make_store, names_of, put_disk


def text_disk(seed: int, chunks: int = 40) -> bytes:
    """Compressible, mostly distinct chunks (words drawn at random), one short trailing chunk."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randrange(3, 9)).hex().encode() for _ in range(400)]
    data = bytearray()
    while len(data) < chunks * CHUNK + 1000:
        data += rng.choice(words) + b" "
    return bytes(data[:chunks * CHUNK + 1000])


def entries_of(store: Store) -> list[tuple[str, list[Entry]]]:
    return [decode_index(p.read_bytes(), what=p.name) for p in iter_index_files(store.layout)]


def optimized(store: Store, live: set[bytes] | None = None) -> optimize.Result:
    with store.exclusive():
        return optimize.execute(store, optimize.plan(store), live=live)


def test_optimize_rewrites_cold_packs_as_spans_and_reads_back_exactly(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    disks = {seed: text_disk(seed) for seed in (1, 2)}
    refs = {seed: put_disk(store, content) for seed, content in disks.items()}
    for seed, ref in refs.items():
        store.set_name("versions", str(seed), target=store.put_manifest({"kind": "v", "links": [ref]}))
    names = names_of(store)
    before = sum(p.stat().st_size for p in iter_pack_files(store.layout))
    old_packs = {p.stem for p in iter_pack_files(store.layout)}
    result = optimized(store)
    assert result.packs_rewritten == len(old_packs) and result.bytes_after < result.bytes_before
    assert not old_packs & {p.stem for p in iter_pack_files(store.layout)}  # the old packs are gone
    assert sum(p.stat().st_size for p in iter_pack_files(store.layout)) < before
    encodings = {e.encoding for _pack, entries in entries_of(store) for e in entries}
    assert encodings == {codec.ZSTD_SPAN}
    assert names_of(store) == names  # chunk names and every manifest stay
    for seed, ref in refs.items():
        out = tmp_path / f"{seed}.raw"
        materialize(store, store.get_disk(ref), out)
        assert out.read_bytes() == disks[seed]
    assert verify(store, deep=True).ok
    with store.exclusive():
        assert optimize.plan(store).indexes == []  # converged: nothing cold is left


def test_random_access_to_one_chunk_of_a_span(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    content = text_disk(3)
    ref = put_disk(store, content)
    optimized(store)
    disk = store.get_disk(ref)
    store.reload_index()
    for index in (0, 17, max(disk.chunks)):
        raw = bytes.fromhex(disk.chunks[index])
        location = store.index.get(raw)
        assert location is not None and location.encoding == codec.ZSTD_SPAN
        chunk = decode_chunk(read_frame(store.layout, location), location, raw)
        assert chunk == content[index * CHUNK:(index + 1) * CHUNK]


def test_dry_run_estimates_and_changes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put_disk(store, text_disk(4))
    files = sorted((p, p.stat().st_mtime_ns) for p in store.layout.packs.rglob("*"))
    with store.exclusive():
        the_plan = optimize.plan(store, estimate=True)
    assert the_plan.estimated_bytes is not None and 0 < the_plan.estimated_bytes < the_plan.stored_bytes
    assert sorted((p, p.stat().st_mtime_ns) for p in store.layout.packs.rglob("*")) == files


def test_min_age_leaves_fresh_packs_alone(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put_disk(store, text_disk(5))
    with store.exclusive():
        assert optimize.plan(store, min_age=3600).indexes == []
        assert optimize.plan(store).indexes


def test_optimize_with_a_live_set_drops_dead_chunks_and_gc_copies_spans(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    kept, dropped = text_disk(6), text_disk(7)
    kept_ref = put_disk(store, kept)
    store.set_name("versions", "kept", target=store.put_manifest({"kind": "v", "links": [kept_ref]}))
    put_disk(store, dropped)
    live = {bytes.fromhex(h) for h in store.get_disk(kept_ref).chunk_digests()}
    result = optimized(store, live=live)
    assert result.chunks == len(live)
    # Half of each span dies: gc keeps a span whole (copied, not recompressed) and the rest reads back.
    half = kept[:len(kept) // 2] + bytes(len(kept) - len(kept) // 2)
    half_ref = put_disk(store, half)
    store.set_name("versions", "kept", target=store.put_manifest({"kind": "v", "links": [half_ref]}))
    with store.exclusive():
        the_plan = gc.plan(store, names_of(store))
        assert the_plan.repack and the_plan.dead_chunks
        gc.execute(store, the_plan)
    out = tmp_path / "half.raw"
    materialize(store, store.get_disk(half_ref), out)
    assert out.read_bytes() == half
    assert verify(store, deep=True).ok


def test_a_span_pack_index_is_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put_disk(store, text_disk(8))
    optimized(store)
    index_path = next(iter_index_files(store.layout))
    good = index_path.read_bytes()
    os.chmod(index_path, 0o644)
    index_path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert ChunkIndex.load(store.layout).damaged == [index_path]
    rebuild_index(store.layout, index_path.stem)
    assert index_path.read_bytes() == good


def test_a_damaged_span_is_refused_before_anything_is_deleted(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    put_disk(store, text_disk(9))
    pack = next(iter_pack_files(store.layout))
    os.chmod(pack, 0o644)
    with open(pack, "r+b") as handle:
        handle.seek(pack.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0xFF]))
    files = sorted(store.layout.packs.rglob("*.pack"))
    with pytest.raises(Corrupt):
        optimized(store)
    assert set(files) <= set(store.layout.packs.rglob("*.pack"))  # the damaged pack is still there


def test_format1_index_is_read_and_an_unknown_encoding_is_refused(tmp_path: Path) -> None:
    pack_hex = "ab" * 32
    raw = b"\x01" * 32
    body = bytearray(HEAD.pack(MAGIC_V1, bytes.fromhex(pack_hex), 1)) + ENTRY_V1.pack(raw, 0, 10, 20)
    old = bytes(body + blake3.blake3(bytes(body)).digest())
    assert decode_index(old, what="v1") == (pack_hex, [(raw, 0, 10, 20, codec.ZSTD, 0)])
    newer = bytearray(encode_index(pack_hex, [decode_index(old, what="v1")[1][0]._replace(encoding=7)]))
    newer[-32:] = blake3.blake3(bytes(newer[:-32])).digest()
    with pytest.raises(UnknownFormat, match="encoding 7") as caught:
        decode_index(bytes(newer), what="v2")
    assert "upgrade" in caught.value.hint
