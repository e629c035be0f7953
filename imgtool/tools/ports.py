"""Host loopback ports for guest services (SSH forwarding)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).

    The port is released before returning, so another process can take it before
    QEMU binds it: callers must treat "address in use" from QEMU as retryable.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
