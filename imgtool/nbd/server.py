"""A read-only NBD server on a Unix socket: fixed newstyle, simple replies, the commands QEMU sends.

Why our own: no well-kept NBD server library exists for Python (nbdkit's Python plugin runs the
system Python, and its GIL serializes callbacks anyway); the subset QEMU 7.2's client needs is small
(NBD_OPT_GO/INFO/EXPORT_NAME/LIST/ABORT, NBD_CMD_READ/FLUSH/DISC), and conformance is proved with
independent clients (qemu-io, qemu-img, libnbd's nbdinfo) in tests/stream/test_nbd_server.py.

Contract:
- Every export is read-only: writes, trims and write-zeroes are answered EPERM (a write's payload is
  read and dropped, so the connection stays in step); flush is a no-op that succeeds.
- A read must lie inside the export (else EINVAL; never padding) and be at most MAX_REQUEST bytes.
- A source's `read` may block (a chunk on its way from a registry) and may raise: the client then gets
  EIO for that request alone, which QEMU with `rerror=stop` turns into a paused VM, not a guest error.
- Up to IN_FLIGHT requests of one connection run at once (QEMU sends at most 16); replies may go out
  of order, one writer on the socket at a time. A disconnect waits for the requests in flight.
- `close` stops accepting, shuts every connection down and returns within a bounded time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from imgtool.nbd import protocol as p

log = logging.getLogger("imgtool.nbd")
IN_FLIGHT = 16
WORKERS = 16
JOIN_TIMEOUT = 5.0


class BlockSource(Protocol):
    """What an export serves: `size` bytes, read by offset (thread-safe, may block, may raise)."""

    @property
    def size(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


ErrorHook = Callable[[str, BaseException], None]


def _recv_exact(sock: socket.socket, count: int) -> bytes | None:
    """Exactly `count` bytes, or None when the peer closed (or reset) the connection first."""
    buffer = bytearray(count)
    view, got = memoryview(buffer), 0
    while got < count:
        try:
            n = sock.recv_into(view[got:])
        except OSError:
            return None
        if n == 0:
            return None
        got += n
    return bytes(buffer)


class Server:
    """Serves `exports` (name -> source) on the Unix socket `path` from background threads."""

    def __init__(self, path: Path, exports: Mapping[str, BlockSource], *, on_error: ErrorHook | None = None,
                 workers: int = WORKERS) -> None:
        self.path = path
        self.exports = dict(exports)
        self.on_error = on_error
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nbd-read")
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closing = False

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Bind (replacing a stale socket file), listen, and accept in a background thread."""
        self.path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.fspath(self.path))
        os.chmod(self.path, 0o600)  # the VM's disk: its owner alone may read it
        listener.listen(16)
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept_loop, name="nbd-accept", daemon=True)
        self._accepting.start()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            connections = list(self._connections)
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + JOIN_TIMEOUT  # one bound for all: a read stuck in a source is let go
        for thread in [*([self._accepting] if self._accepting else []), *self._threads]:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.path.unlink(missing_ok=True)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closing:
                    conn.close()
                    return
                self._connections.add(conn)
                thread = threading.Thread(target=self._serve, args=(conn,), name="nbd-conn", daemon=True)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            name = _Handshake(conn, self.exports).run()
            if name is not None:
                _Transmission(conn, name, self.exports[name], self._pool, self.on_error).run()
        except Exception as exc:  # one broken client must not take the server down
            log.warning("nbd connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()


class _Handshake:
    """The fixed-newstyle negotiation: returns the export chosen, or None when the client left."""

    def __init__(self, conn: socket.socket, exports: Mapping[str, BlockSource]) -> None:
        self.conn, self.exports = conn, exports
        self.no_zeroes = False

    def run(self) -> str | None:
        self.conn.sendall(p.greeting())
        flags = _recv_exact(self.conn, 4)
        if flags is None:
            return None
        client = int.from_bytes(flags, "big")
        if not client & p.FLAG_FIXED_NEWSTYLE:
            return None  # an old client: we speak fixed newstyle only
        self.no_zeroes = bool(client & p.FLAG_NO_ZEROES)
        for _ in range(64):  # a client that only negotiates forever is let go
            head = _recv_exact(self.conn, p.OPTION_HEAD.size)
            if head is None:
                return None
            magic, option, length = p.OPTION_HEAD.unpack(head)
            if magic != p.IHAVEOPT or length > p.MAX_OPTION:
                return None
            data = _recv_exact(self.conn, length)
            if data is None:
                return None
            chosen = self._option(option, data)
            if chosen is not None or option == p.OPT_ABORT:
                return chosen
        return None

    def _option(self, option: int, data: bytes) -> str | None:
        if option == p.OPT_EXPORT_NAME:
            return self._export_name(data)
        if option == p.OPT_ABORT:
            self.conn.sendall(p.option_reply(option, p.REP_ACK))
        elif option == p.OPT_LIST:
            for name in self.exports:
                encoded = name.encode()
                self.conn.sendall(p.option_reply(option, p.REP_SERVER, len(encoded).to_bytes(4, "big") + encoded))
            self.conn.sendall(p.option_reply(option, p.REP_ACK))
        elif option in (p.OPT_INFO, p.OPT_GO):
            return self._info(option, data)
        else:  # STARTTLS, structured replies, meta contexts: not offered, the client goes on without
            self.conn.sendall(p.option_reply(option, p.REP_ERR_UNSUP))
        return None

    def _export_name(self, data: bytes) -> str | None:
        name = data.decode("utf-8", "replace")
        if name not in self.exports:
            return None  # the protocol has no error reply for this option: close
        reply = self.exports[name].size.to_bytes(8, "big") + p.EXPORT_FLAGS.to_bytes(2, "big")
        self.conn.sendall(reply if self.no_zeroes else reply + bytes(124))
        return name

    def _info(self, option: int, data: bytes) -> str | None:
        parsed = p.parse_go(data)
        if parsed is None:
            self.conn.sendall(p.option_reply(option, p.REP_ERR_INVALID))
            return None
        name, _wanted = parsed
        if name not in self.exports:
            self.conn.sendall(p.option_reply(option, p.REP_ERR_UNKNOWN))
            return None
        # Block sizes are always sent: QEMU then aligns its requests, and a client that did not ask may ignore them.
        self.conn.sendall(p.option_reply(option, p.REP_INFO, p.info_export(self.exports[name].size)))
        self.conn.sendall(p.option_reply(option, p.REP_INFO, p.info_block_size()))
        self.conn.sendall(p.option_reply(option, p.REP_ACK))
        return name if option == p.OPT_GO else None


class _Transmission:
    """The transmission phase of one connection: requests in, replies out (maybe out of order)."""

    def __init__(self, conn: socket.socket, name: str, source: BlockSource, pool: ThreadPoolExecutor,
                 on_error: ErrorHook | None) -> None:
        self.conn, self.name, self.source, self.pool, self.on_error = conn, name, source, pool, on_error
        self.slots = threading.BoundedSemaphore(IN_FLIGHT)
        self.send_lock = threading.Lock()

    def run(self) -> None:
        try:
            while self._one():
                pass
        finally:
            for _ in range(IN_FLIGHT):  # requests in flight are answered before the connection closes
                self.slots.acquire(timeout=JOIN_TIMEOUT)

    def _one(self) -> bool:
        head = _recv_exact(self.conn, p.REQUEST.size)
        if head is None:
            return False
        magic, _flags, kind, handle, offset, length = p.REQUEST.unpack(head)
        if magic != p.REQUEST_MAGIC:
            return False  # out of step: nothing after this can be trusted
        if kind == p.CMD_READ:
            return self._read(handle, offset, length)
        if kind == p.CMD_DISC:
            return False
        if kind == p.CMD_WRITE:
            if length > p.MAX_REQUEST or _recv_exact(self.conn, length) is None:
                return False  # a payload this large cannot be skipped safely: close
            return self._send(p.simple_reply(p.EPERM, handle))
        if kind == p.CMD_FLUSH:
            return self._send(p.simple_reply(0, handle))
        if kind in (p.CMD_TRIM, p.CMD_WRITE_ZEROES):
            return self._send(p.simple_reply(p.EPERM, handle))
        return self._send(p.simple_reply(p.EINVAL, handle))

    def _read(self, handle: int, offset: int, length: int) -> bool:
        if length > p.MAX_REQUEST or offset + length > self.source.size:
            return self._send(p.simple_reply(p.EINVAL, handle))
        self.slots.acquire()
        try:
            self.pool.submit(self._answer, handle, offset, length)
        except RuntimeError:  # the server is closing
            self.slots.release()
            return False
        return True

    def _answer(self, handle: int, offset: int, length: int) -> None:
        try:
            try:
                data = self.source.read(offset, length)
                if len(data) != length:
                    raise OSError(f"the source gave {len(data)} bytes for a read of {length}")
            except Exception as exc:
                if self.on_error is not None:
                    self.on_error(self.name, exc)
                log.warning("read of %d bytes at %d from %s failed: %s", length, offset, self.name, exc)
                self._send(p.simple_reply(p.EIO, handle))
                return
            self._send(p.simple_reply(0, handle), data)
        finally:
            self.slots.release()

    def _send(self, *parts: bytes) -> bool:
        with self.send_lock:
            try:
                for part in parts:
                    self.conn.sendall(part)
            except OSError:
                return False
        return True
