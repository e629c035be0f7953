"""store/direct.py on real filesystems: O_DIRECT where the filesystem takes it (the repository's
disk), ordinary writes where it does not (a ramfs mounted for the test, as root); the bytes are the
same either way."""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from store import atomic, direct
from tests.conftest import takes_o_direct

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def disk_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a filesystem that takes O_DIRECT: tmp_path, else one beside the repository."""
    if takes_o_direct(tmp_path):
        yield tmp_path
        return
    cache = REPO / ".cache"
    cache.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as folder:
        assert takes_o_direct(Path(folder)), "neither tmp_path nor the repository's disk takes O_DIRECT"
        yield Path(folder)


@pytest.fixture
def ramfs_dir(tmp_path: Path) -> Iterator[Path]:
    """A ramfs mount: it refuses O_DIRECT (tmpfs takes it since Linux 6.6). Needs root, as CI runs."""
    if os.geteuid() != 0:
        if os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
            pytest.fail("the O_DIRECT fallback test mounts a ramfs: run it as root")
        pytest.skip("the O_DIRECT fallback test mounts a ramfs: run it as root")
    folder = tmp_path / "ramfs"
    folder.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(folder)], check=True)
    try:
        assert not takes_o_direct(folder), "ramfs took O_DIRECT: this test needs a filesystem that refuses"
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _pieces(seed: int, total: int) -> list[bytes]:
    """Frames of odd sizes, like a pack's: no piece boundary falls on a block boundary by design."""
    rng = random.Random(seed)
    pieces, size = [], 0
    while size < total:
        piece = rng.randbytes(rng.randrange(1, 300_000))
        pieces.append(piece)
        size += len(piece)
    return pieces


@pytest.mark.parametrize("total", [100, direct.MIN_DIRECT + 4095, 3 * direct.BLOCK + 12_345, 2 * direct.BLOCK])
def test_write_once_keeps_every_byte_with_direct_io(disk_dir: Path, total: int) -> None:
    pieces = _pieces(total, total)
    target = disk_dir / "pack"
    assert atomic.write_once(target, list(pieces))
    assert target.read_bytes() == b"".join(pieces)


def test_write_once_falls_back_where_o_direct_is_refused(ramfs_dir: Path) -> None:
    pieces = _pieces(7, 2 * direct.BLOCK + 999)
    target = ramfs_dir / "pack"
    assert atomic.write_once(target, list(pieces))
    assert target.read_bytes() == b"".join(pieces)


@pytest.mark.parametrize("where", ["disk", "ramfs"])
def test_positional_writer_writes_aligned_and_short_pieces(request: pytest.FixtureRequest, where: str) -> None:
    folder: Path = request.getfixturevalue(f"{where}_dir")
    chunk = 128 << 10
    rng = random.Random(3)
    size = 9 * chunk + 5000  # a short last chunk, as a disk whose size is not a multiple of the chunk
    pieces = {i: rng.randbytes(chunk) for i in (0, 2, 3, 7)} | {9: rng.randbytes(5000)}
    out = folder / "disk.raw"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        writer = direct.PositionalWriter(fd)
        assert writer.use_direct == (where == "disk")
        for index, data in reversed(pieces.items()):
            writer.pwrite(data, index * chunk)
        writer.pwrite(memoryview(pieces[2])[:4096], 4 * chunk + 100)  # unaligned offset: the ordinary way
        writer.close()
        os.fsync(fd)
    finally:
        os.close(fd)
    expected = bytearray(size)
    for index, data in pieces.items():
        expected[index * chunk:index * chunk + len(data)] = data
    expected[4 * chunk + 100:4 * chunk + 100 + 4096] = pieces[2][:4096]
    assert out.read_bytes() == bytes(expected)


def test_aligned_needs_offset_length_and_address_on_a_block() -> None:
    buf = mmap.mmap(-1, 4 * direct.ALIGN)
    view = memoryview(buf)
    assert direct.aligned(0, view[:direct.ALIGN])
    assert direct.aligned(direct.ALIGN, view[direct.ALIGN:3 * direct.ALIGN])
    assert not direct.aligned(512, view[:direct.ALIGN])  # file offset
    assert not direct.aligned(0, view[:direct.ALIGN - 512])  # length
    assert not direct.aligned(0, view[512:512 + direct.ALIGN])  # address
    assert not direct.aligned(0, memoryview(bytes(direct.ALIGN)))  # read-only: cannot be a read target
    assert not direct.aligned(0, view[:0])


@pytest.mark.parametrize(("where", "bypass"), [("disk", True), ("ramfs", True), ("disk", False)])
def test_write_runs_joins_neighbours_and_keeps_gaps(request: pytest.FixtureRequest, where: str, bypass: bool) -> None:
    folder: Path = request.getfixturevalue(f"{where}_dir")
    chunk = 128 << 10
    rng = random.Random(5)
    indexes = [*range(0, 40), 45, 46, 60, 62]  # a run longer than a block, a pair, two singles
    size = 63 * chunk - 1000  # the last chunk is short
    pieces = [(i * chunk, rng.randbytes(min(chunk, size - i * chunk))) for i in indexes]
    out = folder / "disk.raw"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, size)
        writer = direct.PositionalWriter(fd, bypass_cache=bypass)
        assert writer.use_direct == (where == "disk" and bypass)
        writer.write_runs([(offset, memoryview(data)) for offset, data in reversed(pieces)])
        writer.close()
    finally:
        os.close(fd)
    expected = bytearray(size)
    for offset, data in pieces:
        expected[offset:offset + len(data)] = data
    assert out.read_bytes() == bytes(expected)
