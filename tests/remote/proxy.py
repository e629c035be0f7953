"""A counting HTTP proxy in front of a real registry, for kill -9 campaigns and transfer counts.

It forwards every request to the registry unchanged (Location headers rewritten to point back at
the proxy), counts requests and body bytes in both directions, and can SIGKILL a victim process at
the k-th request or once b body bytes have passed: so a client dies at exact, repeatable points,
including in the middle of a blob going either way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

PIECE = 16 << 10
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade"}


class Killed(Exception):
    """The victim is dead: stop serving this connection."""


@dataclass
class Switch:
    kill_at_request: int | None = None
    kill_at_byte: int | None = None
    victim: int | None = None  # pid
    requests: int = 0
    bytes: int = 0
    fired: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    known: threading.Event = field(default_factory=threading.Event)
    action: Callable[[], None] | None = None  # instead of killing the victim (e.g. stop the registry)

    def arm(self, *, at_request: int | None = None, at_byte: int | None = None) -> None:
        """Count from now (before the victim starts, so its first request counts too)."""
        with self.lock:
            self.victim, self.kill_at_request, self.kill_at_byte = None, at_request, at_byte
            self.requests = self.bytes = 0
            self.fired = False
            self.known.clear()

    def aim(self, victim: int) -> None:
        self.victim = victim
        self.known.set()

    def reset(self) -> None:
        self.arm()

    def _fire(self) -> None:
        if not self.fired and (self.kill_at_request is not None or self.kill_at_byte is not None):
            self.fired = True
            if self.action is not None:
                self.action()
                raise Killed
            self.known.wait(timeout=30)  # the pid is set right after the fork
            if self.victim is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.victim, signal.SIGKILL)
        raise Killed

    def on_request(self) -> None:
        with self.lock:
            if self.fired:
                raise Killed
            self.requests += 1
            if self.kill_at_request is not None and self.requests >= self.kill_at_request:
                self._fire()

    def on_bytes(self, count: int) -> None:
        with self.lock:
            if self.fired:
                raise Killed
            self.bytes += count
            if self.kill_at_byte is not None and self.bytes >= self.kill_at_byte:
                self._fire()


def _handler(upstream: str, switch: Switch, client: httpx.Client) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            return

        def _forward(self) -> None:
            try:
                switch.on_request()
                body = self._read_body()
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP | {"host"}}
                try:
                    answer = client.request(self.command, upstream + self.path, headers=headers, content=body)
                except httpx.TransportError:
                    answer = httpx.Response(502, content=b"upstream unreachable")  # what a load balancer says
                self._answer(answer)
            except Killed:
                self.close_connection = True

        def _read_body(self) -> bytes:
            left = int(self.headers.get("content-length") or 0)
            out = bytearray()
            while left > 0:
                piece = self.rfile.read(min(PIECE, left))
                if not piece:
                    break
                left -= len(piece)
                out += piece
                switch.on_bytes(len(piece))
            return bytes(out)

        def _answer(self, answer: httpx.Response) -> None:
            self.send_response(answer.status_code)
            here = f"http://127.0.0.1:{self.server.server_port}"  # type: ignore[attr-defined]
            for key, value in answer.headers.multi_items():
                if key.lower() not in HOP:
                    self.send_header(key, value.replace(upstream, here) if key.lower() == "location" else value)
            data = answer.content if self.command != "HEAD" else b""
            length = answer.headers.get("content-length", str(len(data)))
            self.send_header("Content-Length", length if self.command == "HEAD" else str(len(data)))
            self.end_headers()
            for start in range(0, len(data), PIECE):
                piece = data[start:start + PIECE]
                switch.on_bytes(len(piece))
                self.wfile.write(piece)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _forward

    return Handler


@contextlib.contextmanager
def proxy(upstream: str) -> Iterator[tuple[str, Switch]]:
    """(proxy URL, its switch) in front of `upstream` (http://127.0.0.1:PORT)."""
    switch = Switch()
    client = httpx.Client(timeout=60, follow_redirects=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(upstream, switch, client))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", switch
    finally:
        server.shutdown()
        server.server_close()
        client.close()
        thread.join(timeout=10)
