"""NBD client against a scripted fake server (unit) and real qemu-nbd exports (integration)."""

from __future__ import annotations

import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, InvalidArgument, ToolFailed
from imgtool.tools import nbd, qemu_img, run
from tests.conftest import require_tools
from tests.test_qemu_img import DATA, FORMATS, IMAGE_SIZE, ZEROED, KiB, MiB, make_image, qemu_io, to_raw

# ---------------------------------------------------------------------------
# a scripted NBD server on a socketpair

Script = Callable[["Peer"], None]


def read(source: nbd.Reader | nbd.Export, offset: int, length: int) -> bytes:
    """`length` guest bytes from `offset` through the real readinto path."""
    buf = bytearray(length)
    source.readinto(offset, memoryview(buf))
    return bytes(buf)


class Peer:
    """The server side of a socketpair, with helpers that speak NBD."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.client_flags = -1
        self.disconnected = False

    def recv(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def greet(self, flags: int = nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES) -> None:
        self.sock.sendall(nbd.NBDMAGIC + struct.pack(">QH", nbd.IHAVEOPT, flags))
        (self.client_flags,) = struct.unpack(">I", self.recv(4))

    def option(self) -> tuple[int, bytes]:
        magic, option, length = struct.unpack(">QII", self.recv(16))
        assert magic == nbd.IHAVEOPT
        return option, self.recv(length)

    def reply(self, option: int, kind: int, payload: bytes = b"") -> None:
        self.sock.sendall(struct.pack(">QIII", nbd.OPT_REPLY_MAGIC, option, kind, len(payload)) + payload)

    def go(self, size: int, *, max_block: int | None = None) -> None:
        option, payload = self.option()
        assert option == nbd.OPT_GO
        (name_len,) = struct.unpack(">I", payload[:4])
        assert payload[4:4 + name_len] == nbd.EXPORT_NAME.encode()
        self.reply(nbd.OPT_GO, nbd.REP_INFO, struct.pack(">HQH", nbd.INFO_EXPORT, size, 1 | 2))
        if max_block is not None:
            self.reply(nbd.OPT_GO, nbd.REP_INFO, struct.pack(">HIII", nbd.INFO_BLOCK_SIZE, 1, 4096, max_block))
        self.reply(nbd.OPT_GO, nbd.REP_ACK)

    def request(self) -> tuple[int, int, int, int]:
        """(type, handle, offset, length) of the next request."""
        magic, _flags, kind, handle, offset, length = struct.unpack(">IHHQQI", self.recv(28))
        assert magic == nbd.REQUEST_MAGIC
        return kind, handle, offset, length

    def answer(self, handle: int, payload: bytes = b"", error: int = 0,
               magic: int = nbd.SIMPLE_REPLY_MAGIC) -> None:
        self.sock.sendall(struct.pack(">IIQ", magic, error, handle) + payload)

    def serve_reads(self, batch: int = 2) -> None:
        """Answer reads with `pattern` bytes, `batch` at a time in reverse order, until DISC."""
        while True:
            pending = []
            for _ in range(batch):
                kind, handle, offset, length = self.request()
                if kind == nbd.CMD_DISC:
                    self.disconnected = True
                    break
                assert kind == nbd.CMD_READ
                pending.append((handle, offset, length))
            for handle, offset, length in reversed(pending):
                self.answer(handle, pattern(offset, length))
            if self.disconnected:
                return


def pattern(offset: int, length: int) -> bytes:
    return bytes((i * 7 + 3) % 251 for i in range(offset, offset + length))


class Fake:
    """A Reader connected to a server thread running `script`."""

    def __init__(self, script: Script) -> None:
        client, server = socket.socketpair()
        client.settimeout(10)
        self.client = client
        self.peer = Peer(server)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, args=(script,), daemon=True)
        self.thread.start()

    def _serve(self, script: Script) -> None:
        try:
            script(self.peer)
        except (EOFError, ConnectionResetError):
            pass  # the client hung up, as clients under test do
        except BaseException as exc:  # reported by finish()
            self.error = exc
        finally:
            self.peer.sock.close()

    def reader(self) -> nbd.Reader:
        return nbd.Reader(self.client)

    def finish(self) -> Peer:
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.peer


# ---------------------------------------------------------------------------
# unit: the protocol


def test_go_pipelined_out_of_order_reads_and_disconnect(monkeypatch: pytest.MonkeyPatch) -> None:
    size = 3 * MiB

    def script(peer: Peer) -> None:
        peer.greet()
        peer.go(size, max_block=256 * KiB)
        peer.serve_reads(batch=2)

    fake = Fake(script)
    reader = fake.reader()
    assert reader.size == size and reader.max_request == 256 * KiB
    # 3 MiB in 256 KiB requests, answered two at a time in reverse order.
    assert read(reader, 0, size) == pattern(0, size)
    assert read(reader, 1000, 1 * MiB - 1000 + 1) == pattern(1000, 1 * MiB - 1000 + 1)
    words = memoryview(bytearray(512 * KiB)).cast("I")  # any writable buffer is filled bytewise
    reader.readinto(8192, words)  # two requests, so the server's batches of two close
    assert words.tobytes() == pattern(8192, 512 * KiB)
    with pytest.raises(InvalidArgument, match="writable"):
        reader.readinto(0, memoryview(b"read-only"))
    reader.close()
    peer = fake.finish()
    assert peer.client_flags == nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES
    assert peer.disconnected


def test_export_name_fallback_when_go_is_unsupported() -> None:
    def script(peer: Peer) -> None:
        peer.greet(flags=nbd.FLAG_FIXED_NEWSTYLE)  # no NO_ZEROES: the 124 zero bytes follow
        option, _ = peer.option()
        peer.reply(option, nbd.REP_ERR_UNSUP)
        option, name = peer.option()
        assert (option, name) == (nbd.OPT_EXPORT_NAME, nbd.EXPORT_NAME.encode())
        peer.sock.sendall(struct.pack(">QH", 4096, 1) + bytes(124))
        peer.serve_reads(batch=1)

    fake = Fake(script)
    reader = fake.reader()
    assert reader.size == 4096
    assert read(reader, 10, 100) == pattern(10, 100)
    reader.close()
    assert fake.finish().client_flags == nbd.FLAG_FIXED_NEWSTYLE


def greeting_only(raw: bytes) -> Script:
    def script(peer: Peer) -> None:
        peer.sock.sendall(raw)
        peer.recv(4)

    return script


@pytest.mark.parametrize(("script", "message"), [
    (greeting_only(b"HTTP/1.1 200 OK\r\n\r\n"), "not NBDMAGIC"),
    (greeting_only(nbd.NBDMAGIC + struct.pack(">QQ", nbd.OLDSTYLE_MAGIC, 0)[:10]), "oldstyle"),
    (greeting_only(nbd.NBDMAGIC + struct.pack(">QH", nbd.IHAVEOPT, 0)), "fixed newstyle"),
])
def test_bad_greetings_are_protocol_violations(script: Script, message: str) -> None:
    fake = Fake(script)
    with pytest.raises(ToolFailed, match=message):
        fake.reader()
    fake.client.close()
    fake.finish()


def go_replying(*replies: tuple[int, bytes]) -> Script:
    def script(peer: Peer) -> None:
        peer.greet()
        option, _ = peer.option()
        for kind, payload in replies:
            peer.reply(option, kind, payload)
        peer.recv(1)

    return script


@pytest.mark.parametrize(("script", "message"), [
    (go_replying((nbd.REP_ERR_BIT | 6, b"export 'imgtool' not present")), "export 'imgtool' not present"),
    (go_replying((nbd.REP_ACK, b"")), "without export size"),
    (go_replying((nbd.REP_INFO, struct.pack(">HQ", nbd.INFO_EXPORT, 1))), "NBD_INFO_EXPORT of 10 bytes"),
    (go_replying((nbd.REP_INFO, struct.pack(">HQH", nbd.INFO_EXPORT, 1, 0)), (nbd.REP_ACK, b"")),
     "lack NBD_FLAG_HAS_FLAGS"),
])
def test_bad_go_replies_fail(script: Script, message: str) -> None:
    fake = Fake(script)
    with pytest.raises(ToolFailed, match=message):
        fake.reader()
    fake.client.close()
    fake.finish()


def test_oversized_option_reply_is_refused() -> None:
    def script(peer: Peer) -> None:
        peer.greet()
        option, _ = peer.option()
        peer.sock.sendall(struct.pack(">QIII", nbd.OPT_REPLY_MAGIC, option, nbd.REP_INFO, 1 << 30))
        peer.recv(1)

    fake = Fake(script)
    with pytest.raises(ToolFailed, match="option reply of 1073741824 bytes"):
        fake.reader()
    fake.client.close()
    fake.finish()


def one_bad_read(answer: Callable[[Peer, int, int], None]) -> Script:
    def script(peer: Peer) -> None:
        peer.greet()
        peer.go(1 * MiB)
        _kind, handle, _offset, length = peer.request()
        answer(peer, handle, length)
        peer.recv(1)

    return script


@pytest.mark.parametrize(("answer", "error", "message"), [
    (lambda p, h, n: p.answer(h, error=5), Corrupt, "EIO"),
    (lambda p, h, n: p.answer(h, error=22), ToolFailed, "EINVAL"),
    (lambda p, h, n: p.answer(h + 1, bytes(n)), ToolFailed, "unknown handle"),
    (lambda p, h, n: p.answer(h, magic=nbd.STRUCTURED_REPLY_MAGIC), ToolFailed, "structured reply"),
    (lambda p, h, n: p.answer(h, magic=0xDEADBEEF), ToolFailed, "reply magic 0xdeadbeef"),
    (lambda p, h, n: (p.answer(h, bytes(n // 2)), p.sock.shutdown(socket.SHUT_WR)), ToolFailed,
     "closed the connection"),
])
def test_bad_read_replies_fail_and_poison_the_connection(
        answer: Callable[[Peer, int, int], None], error: type[Exception], message: str) -> None:
    fake = Fake(one_bad_read(answer))
    reader = fake.reader()
    with pytest.raises(error, match=message):
        read(reader, 0, 4096)
    with pytest.raises(ToolFailed, match="unusable"):
        read(reader, 0, 4096)
    reader.close()
    fake.finish()


def test_reads_outside_the_disk_are_refused_without_a_request() -> None:
    def script(peer: Peer) -> None:
        peer.greet()
        peer.go(4096)
        kind, *_ = peer.request()
        assert kind == nbd.CMD_DISC

    fake = Fake(script)
    reader = fake.reader()
    for offset, length in [(-1, 1), (4095, 2), (4097, 0)]:
        with pytest.raises(InvalidArgument, match="outside the disk"):
            read(reader, offset, length)
    assert read(reader, 4096, 0) == b""
    reader.close()
    fake.finish()


def test_qemu_nbd_argv() -> None:
    argv = nbd.qemu_nbd_argv(Path("disk.vmdk"), fmt="vmdk", socket_path=Path("/w/s.sock"), shared=3)
    assert argv == ["qemu-nbd", "--read-only", "--format=vmdk", "--socket=/w/s.sock",
                    "--export-name=imgtool", "--shared=3", "--cache=writeback", "--aio=threads",
                    "--persistent", "./disk.vmdk"]
    with pytest.raises(InvalidArgument):
        nbd.qemu_nbd_argv(Path("/d"), fmt="host_device", socket_path=Path("/s"), shared=1)


def test_limits_grow_with_the_disk() -> None:
    small, big = nbd.limits_for(1), nbd.limits_for(100 << 30)
    assert small.address_space == big.address_space == run.UNTRUSTED.address_space
    assert run.UNTRUSTED.cpu_seconds is not None
    assert run.UNTRUSTED.cpu_seconds < (small.cpu_seconds or 0) < (big.cpu_seconds or 0)
    assert (big.cpu_seconds or 0) >= 6 * 100  # compressed qcow2 costs ~6 CPU-s per GiB


def test_export_refuses_a_socket_path_that_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="too long"):
        nbd.Export(tmp_path / "x", fmt="raw", workdir=tmp_path / ("d" * 120))
    with pytest.raises(InvalidArgument, match="connections"):
        nbd.Export(tmp_path / "x", fmt="raw", workdir=tmp_path, connections=0)


# ---------------------------------------------------------------------------
# integration: real qemu-nbd


def random_qcow2(tmp_path: Path, size: int) -> tuple[Path, bytes]:
    content = os.urandom(size)
    raw = tmp_path / "random.raw"
    raw.write_bytes(content)
    image = tmp_path / "random.qcow2"
    qemu_img.convert(raw, image, src_fmt="raw", dst_fmt="qcow2")
    return image, content


@pytest.mark.integration
@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reads_guest_content_of_each_format(tmp_path: Path, fmt: str) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = make_image(tmp_path / f"disk.{fmt}", fmt)
    expected = to_raw(image, fmt, tmp_path)
    with nbd.Export(image, fmt=fmt, workdir=tmp_path) as export:
        assert export.size == len(expected) >= IMAGE_SIZE
        assert read(export, 0, export.size) == expected
        for value, start, length in DATA:
            assert read(export, start, length) == bytes([value]) * length
        assert read(export, *ZEROED) == bytes(ZEROED[1])
        assert read(export, 0, 1 * MiB) == bytes(1 * MiB)  # never written
        assert read(export, 1 * MiB - 3, 70001) == expected[1 * MiB - 3:1 * MiB - 3 + 70001]
        buf = bytearray(192 * KiB)
        export.readinto(8 * MiB, memoryview(buf))
        assert buf == bytes([0x55]) * len(buf)


@pytest.mark.integration
def test_export_of_overlay_shows_base_and_overlay(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    base = tmp_path / "base.raw"
    run.run(["qemu-img", "create", "-q", "-f", "raw", base, IMAGE_SIZE])
    qemu_io(base, "raw", "write -P 0x11 0 2M", "write -P 0x22 6M 1M")
    overlay = tmp_path / "vm.qcow2"
    qemu_img.create_overlay(overlay, backing=base, backing_fmt="raw")
    qemu_io(overlay, "qcow2", "write -P 0x33 100k 10k", "write -z 6M 64k")
    with nbd.Export(overlay, fmt="qcow2", workdir=tmp_path) as export:
        content = read(export, 0, export.size)
    assert content == to_raw(overlay, "qcow2", tmp_path)
    assert content[:100 * KiB] == b"\x11" * (100 * KiB)
    assert content[100 * KiB:110 * KiB] == b"\x33" * (10 * KiB)
    assert content[110 * KiB:2 * MiB] == b"\x11" * (2 * MiB - 110 * KiB)
    assert content[6 * MiB:6 * MiB + 64 * KiB] == bytes(64 * KiB)
    assert content[6 * MiB + 64 * KiB:7 * MiB] == b"\x22" * (1 * MiB - 64 * KiB)


@pytest.mark.integration
def test_parallel_readers_on_several_connections(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    size = 40 * MiB  # more than one 32 MiB request, with random content
    image, content = random_qcow2(tmp_path, size)
    failures: list[str] = []
    with nbd.Export(image, fmt="qcow2", workdir=tmp_path, connections=3) as export:
        assert read(export, 0, size) == content

        def work(k: int) -> None:
            step = 3 * MiB + 4097
            for offset in range(k * 1234, size - step, step * 2):
                if read(export, offset, step) != content[offset:offset + step]:
                    failures.append(f"thread {k} at {offset}")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert failures == []


@pytest.mark.integration
def test_export_cleans_up(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = make_image(tmp_path / "a.qcow2", "qcow2")
    with nbd.Export(image, fmt="qcow2", workdir=tmp_path) as export:
        assert export.socket_path.exists()
        server = export._server
        assert server is not None and server.alive()
    assert not server.alive()
    assert not export.socket_path.exists()
    assert list(tmp_path.glob("*.sock")) == []


@pytest.mark.integration
def test_unreadable_image_fails_with_qemu_nbd_message(tmp_path: Path) -> None:
    require_tools("qemu-nbd")
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(os.urandom(64 * KiB))
    export = nbd.Export(junk, fmt="qcow2", workdir=tmp_path)
    with pytest.raises(Corrupt, match="not in qcow2 format"), export:
        pass
    assert list(tmp_path.glob("*.sock")) == []


@pytest.mark.integration
def test_qemu_nbd_dying_mid_session_is_reported(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io", "qemu-nbd")
    image = make_image(tmp_path / "a.qcow2", "qcow2")
    with nbd.Export(image, fmt="qcow2", workdir=tmp_path) as export:
        assert export._server is not None
        os.kill(export._server.pid, signal.SIGKILL)
        with pytest.raises(ToolFailed, match=r"died while reading.*killed by a signal"):
            read(export, 0, 1 * MiB)
        with pytest.raises(ToolFailed):
            read(export, 0, 1 * MiB)
