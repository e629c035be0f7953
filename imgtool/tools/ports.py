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


def is_free(port: int) -> bool:
    """Whether 127.0.0.1:port can be bound now (a fixed forward's host port, checked before QEMU binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def ssh_answers(port: int, *, timeout: float = 5.0) -> bool:
    """Whether an SSH server answers on 127.0.0.1:port with its banner. (QEMU's user network accepts
    the TCP connection even when nothing listens in the guest, so a connect alone proves nothing.)"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False
