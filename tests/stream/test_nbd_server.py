"""The NBD server against independent clients: qemu-io and qemu-img (QEMU's own NBD client, the one a
VM uses) and libnbd's nbdinfo, plus raw protocol checks: unaligned, straddling and past-the-end reads,
16 requests in flight answered out of order, writes refused, disconnects."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.nbd import protocol as p
from imgtool.nbd.server import Server
from imgtool.tools import nbd as client
from tests.conftest import require_tools

SIZE = 3 * (1 << 20) + 4096  # not a multiple of the preferred block: the last block is short


def pattern(size: int) -> bytes:
    """Bytes that differ at every offset modulo a prime, so a misplaced read cannot match."""
    unit = bytes((i * 7 + i // 251) % 256 for i in range(251 * 256))
    return (unit * (size // len(unit) + 1))[:size]


DATA = pattern(SIZE)


class Memory:
    """An in-memory source; `gate` (when set) holds reads of the given offsets until released."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.reads: list[tuple[int, int]] = []
        self.hold: dict[int, threading.Event] = {}
        self.fail_at: set[int] = set()

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        if offset in self.hold:
            self.hold[offset].wait(10)
        if offset in self.fail_at:
            raise OSError("the registry is down")
        return self.data[offset:offset + length]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Memory]]:
    source = Memory(DATA)
    sock = tmp_path / "disk.sock"
    with Server(sock, {"os": source, "lun0": Memory(bytes(4096))}):
        yield sock, source


def uri(sock: Path, export: str = "os") -> str:
    return f"nbd+unix:///{export}?socket={sock}"


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_qemu_img_sees_the_size_and_exact_bytes(served: tuple[Path, Memory], tmp_path: Path) -> None:
    require_tools("qemu-img")
    sock, _ = served
    info = json.loads(run("qemu-img", "info", "--output=json", "-f", "raw", uri(sock)).stdout)
    assert info["virtual-size"] == SIZE
    reference = tmp_path / "reference.raw"
    reference.write_bytes(DATA)
    compared = run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri(sock), str(reference))
    assert compared.returncode == 0, compared.stderr
    reference.write_bytes(DATA[:-1] + bytes([DATA[-1] ^ 1]))  # a one-bit difference in the short last block
    assert run("qemu-img", "compare", "-f", "raw", "-F", "raw", uri(sock), str(reference)).returncode == 1


def test_qemu_io_unaligned_straddling_and_past_the_end(served: tuple[Path, Memory]) -> None:
    require_tools("qemu-io")
    sock, _ = served
    # qemu-io reads through QEMU's block layer, which aligns to the 512-byte minimum we advertise.
    for offset, length in ((1, 3), (131071, 2), (131072 - 700, 1400), (SIZE - 5, 5)):
        out = run("qemu-io", "-r", "-f", "raw", "-c", f"read -v {offset} {length}", uri(sock))
        assert out.returncode == 0 and "error" not in out.stdout.lower() + out.stderr.lower(), out
        dumped = bytes(int(b, 16) for line in out.stdout.splitlines() if re.match(r"[0-9a-f]{8}:  ", line)
                       for b in line[11:].split("  ")[0].split())
        assert dumped == DATA[offset:offset + length]
    past = run("qemu-io", "-r", "-f", "raw", "-c", f"read {SIZE - 512} 1024", uri(sock))
    assert "error" in (past.stdout + past.stderr).lower() or "failed" in (past.stdout + past.stderr).lower()
    written = run("qemu-io", "-f", "raw", "-c", "write 0 512", uri(sock))
    assert "read-only" in (written.stdout + written.stderr).lower() or written.returncode != 0


def test_nbdinfo_lists_exports_and_block_sizes(served: tuple[Path, Memory]) -> None:
    require_tools("nbdinfo")
    sock, _ = served
    info = json.loads(run("nbdinfo", "--json", uri(sock)).stdout)
    export = info["exports"][0]
    assert export["export-size"] == SIZE and export["is_read_only"] is True
    assert (export["block_size_minimum"], export["block_size_preferred"], export["block_size_maximum"]) == \
        (512, 128 << 10, 32 << 20)
    listed = json.loads(run("nbdinfo", "--json", "--list", f"nbd+unix://?socket={sock}").stdout)
    assert sorted(e["export-name"] for e in listed["exports"]) == ["lun0", "os"]
    assert run("nbdinfo", uri(sock, "nosuch")).returncode != 0


class Raw:
    """A hand-driven client for what the tools above cannot be made to do."""

    def __init__(self, sock_path: Path, export: str = "os") -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(os.fspath(sock_path))
        assert self.recv(18)[:8] == p.NBDMAGIC
        self.sock.sendall((p.FLAG_FIXED_NEWSTYLE | p.FLAG_NO_ZEROES).to_bytes(4, "big"))
        name = export.encode()
        body = len(name).to_bytes(4, "big") + name + (0).to_bytes(2, "big")
        self.sock.sendall(p.OPTION_HEAD.pack(p.IHAVEOPT, p.OPT_GO, len(body)) + body)
        while True:
            _magic, _opt, kind, length = p.OPTION_REPLY.unpack(self.recv(p.OPTION_REPLY.size))
            self.recv(length)
            if kind == p.REP_ACK:
                break

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            piece = self.sock.recv(n - len(data))
            assert piece, "the server closed the connection"
            data += piece
        return data

    def request(self, kind: int, handle: int, offset: int, length: int, payload: bytes = b"") -> None:
        self.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, kind, handle, offset, length) + payload)

    def reply(self, sizes: dict[int, int]) -> tuple[int, int, bytes]:
        magic, error, handle = p.SIMPLE_REPLY.unpack(self.recv(p.SIMPLE_REPLY.size))
        assert magic == p.SIMPLE_REPLY_MAGIC
        return handle, error, self.recv(sizes.get(handle, 0)) if error == 0 else b""


def test_sixteen_requests_in_flight_answered_out_of_order(served: tuple[Path, Memory]) -> None:
    sock, source = served
    gate = threading.Event()
    source.hold[0] = gate  # the first request waits until the other fifteen are answered
    raw = Raw(sock)
    sizes = {}
    for handle in range(16):
        offset, length = handle * 100_000, 70_000 + handle
        sizes[handle] = length
        raw.request(p.CMD_READ, handle, offset, length)
    answered = [raw.reply(sizes) for _ in range(15)]
    assert sorted(h for h, _, _ in answered) == list(range(1, 16))
    gate.set()
    answered.append(raw.reply(sizes))
    assert answered[-1][0] == 0
    for handle, error, data in answered:
        assert error == 0 and data == DATA[handle * 100_000:handle * 100_000 + sizes[handle]]


def test_refusals_keep_the_connection_in_step(served: tuple[Path, Memory]) -> None:
    sock, source = served
    raw = Raw(sock)
    raw.request(p.CMD_READ, 1, SIZE - 10, 11)  # one byte past the end
    assert raw.reply({}) == (1, p.EINVAL, b"")
    raw.request(p.CMD_READ, 2, 0, p.MAX_REQUEST + 512)
    assert raw.reply({}) == (2, p.EINVAL, b"")
    raw.request(p.CMD_WRITE, 3, 0, 512, bytes(512))
    assert raw.reply({}) == (3, p.EPERM, b"")
    raw.request(p.CMD_FLUSH, 4, 0, 0)
    assert raw.reply({}) == (4, 0, b"")
    source.fail_at.add(4096)
    raw.request(p.CMD_READ, 5, 4096, 512)
    assert raw.reply({5: 512}) == (5, p.EIO, b"")  # a failed source read is EIO for that request alone
    raw.request(p.CMD_READ, 6, 8192, 512)
    assert raw.reply({6: 512}) == (6, 0, DATA[8192:8704])
    raw.request(p.CMD_DISC, 7, 0, 0)
    assert raw.sock.recv(1) == b""  # closed after the disconnect


def test_a_client_that_vanishes_mid_request_leaves_the_server_serving(served: tuple[Path, Memory]) -> None:
    sock, _ = served
    raw = Raw(sock)
    raw.sock.sendall(p.REQUEST.pack(p.REQUEST_MAGIC, 0, p.CMD_READ, 1, 0, 512)[:10])
    raw.sock.close()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(os.fspath(sock))
        reader = client.Reader(conn, export_name="os")
        assert reader.size == SIZE
        reader.close()


def test_close_returns_with_a_read_stuck_in_the_source(tmp_path: Path) -> None:
    source = Memory(DATA)
    source.hold[0] = threading.Event()  # never set: close must not wait for it forever
    server = Server(tmp_path / "s.sock", {"os": source})
    server.start()
    raw = Raw(tmp_path / "s.sock")
    raw.request(p.CMD_READ, 1, 0, 512)
    server.close()
    assert not (tmp_path / "s.sock").exists()
    source.hold[0].set()
