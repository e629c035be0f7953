"""MappedReader: verbatim extents by pread, the rest through qemu-nbd; both must agree with QEMU."""

from __future__ import annotations

import mmap
import subprocess
from pathlib import Path

import pytest

from imgtool.tools import qemu_img
from imgtool.tools.diskread import MappedReader
from tests.conftest import require_tools, takes_o_direct
from tests.images import MiB, qemu_io

pytestmark = pytest.mark.integration


def test_mixed_plain_compressed_and_zero_clusters(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = tmp_path / "mixed.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    qemu_io(image, "qcow2", "write -P 0x11 0 1M", "write -c -P 0x22 2M 64k", "write -c -P 0x33 4M 128k",
            "write -z 6M 1M", "write -P 0x44 15M 1M")
    expected = tmp_path / "expected.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(expected)], check=True)
    extents = qemu_img.map_extents(image, fmt="qcow2")
    with MappedReader(image, fmt="qcow2", extents=extents, layers={0: image}, limits=None) as reader:
        got = b"".join(reader.read(offset, MiB) for offset in range(0, 16 * MiB, MiB))
        direct, through_nbd = reader.direct_bytes, reader.nbd_bytes
    assert got == expected.read_bytes()
    assert direct >= 2 * MiB  # plain clusters never went through the socket
    assert 0 < through_nbd < 2 * MiB  # compressed clusters did, and only they


def test_unaligned_reads_cross_extents(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = tmp_path / "a.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "4M"], check=True)
    qemu_io(image, "qcow2", "write -P 0x55 64k 64k", "write -c -P 0x66 128k 64k")
    raw = tmp_path / "a.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    content = raw.read_bytes()
    extents = qemu_img.map_extents(image, fmt="qcow2")
    with MappedReader(image, fmt="qcow2", extents=extents, layers={0: image}, limits=None) as reader:
        for offset, length in [(60000, 10000), (100000, 100000), (0, 4 * MiB), (4 * MiB - 7, 7)]:
            assert reader.read(offset, length) == content[offset:offset + length]


def test_readinto_a_reused_aligned_buffer_reads_direct_and_zeroes_holes(tmp_path: Path) -> None:
    """Capture reuses each thread's buffer: what a zero extent covers must be zeroed, not left over."""
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = tmp_path / "holes.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "4M"], check=True)
    qemu_io(image, "qcow2", "write -P 0x77 0 1M", "write -z 1M 64k", "write -P 0x78 3M 512k")
    raw = tmp_path / "holes.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw)], check=True)
    content = raw.read_bytes()
    extents = qemu_img.map_extents(image, fmt="qcow2")
    buffer = mmap.mmap(-1, 4 * MiB)
    with MappedReader(image, fmt="qcow2", extents=extents, layers={0: image}, limits=None) as reader:
        for _ in range(2):
            buffer.write(b"\xff" * (4 * MiB))  # left over from an earlier run
            buffer.seek(0)
            reader.readinto(0, memoryview(buffer))
            assert bytes(buffer) == content
        taken = reader.o_direct_bytes
    if takes_o_direct(tmp_path):
        assert taken == 2 * (MiB + 512 * 1024)  # the data extents, both times, bypassing the page cache

