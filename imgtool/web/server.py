"""Binding and running `imgtool serve`: loopback unless an address is asked for, a socket bound before the
URL is printed (so the printed port is the real one, also for --port 0), uvicorn serving the app."""

from __future__ import annotations

import ipaddress
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from imgtool.errors import InvalidArgument
from imgtool.web import security
from imgtool.web.app import build, keep_warm, warm

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 8470


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def url(self, token: str) -> str:
        return f"{self.base}/?token={token}"

    @property
    def base(self) -> str:
        """The address without the token (it answers 403 until the browser has the cookie)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_listen(text: str | None, port: int) -> Listen:
    """--listen ADDR (an IP address, not a name: what is bound is exactly what was asked for)."""
    if not 0 <= port <= 65535:
        raise InvalidArgument(f"port {port} is not 0..65535", hint="e.g. --port 8470 (0: any free port)")
    if text is None:
        return Listen(LOOPBACK, port)
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        raise InvalidArgument(f"--listen {text!r} is not an IP address",
                              hint="give an address such as 127.0.0.1 or ::1 (names are not resolved)") from None
    return Listen(str(address), port)


def bind(listen: Listen) -> tuple[socket.socket, Listen]:
    """A listening socket on the address; the Listen it really got (the port, when 0 was asked)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((listen.host, listen.port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(f"cannot listen on {listen.host}:{listen.port}: {exc.strerror}",
                              hint="pick another port with --port (0: any free port)") from None
    return sock, Listen(listen.host, sock.getsockname()[1])


def prepare(root: Path, keys: security.Secrets, *, allow_actions: bool) -> security.TokenGate:
    """The application with its caches filled and du counted (seconds on a big home): done before the
    URL is printed, so that no first visit waits for them."""
    app = build(root, keys, allow_actions=allow_actions)
    warm(app)
    return app


def serve(app: security.TokenGate, sock: socket.socket) -> None:
    """Serve until interrupted (Ctrl-C), keeping the caches warm as the home changes; the socket is
    closed on the way out."""
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            server_header=False, proxy_headers=False)
    stop = threading.Event()
    keep_warm(app, stop)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        stop.set()
        sock.close()
