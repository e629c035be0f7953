"""A minimal QMP (QEMU Machine Protocol) client over a unix socket.

The protocol: the server greets with {"QMP": {...}}; the client must send
`qmp_capabilities` before anything else; every command gets exactly one reply,
{"return": ...} or {"error": {"class", "desc"}}, and asynchronous {"event": ...}
messages may arrive at any time in between. Messages are JSON objects, one per line.

QEMU serves one QMP client per socket at a time: a second client's connection is
accepted by the kernel but is not greeted until the first leaves, which shows
up here as a greeting timeout.

Every failure (no socket, no answer in time, connection dropped, error reply) is
a ToolFailed whose message says which command and why.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path
from types import TracebackType

from imgtool.errors import ToolFailed

_HINT = "is the VM running? `imgtool vm show` reports its state"


class ConnectionClosed(ToolFailed):
    """QEMU closed the QMP connection (it exited, or it is exiting after `quit`)."""


class Qmp:
    """A connected, capabilities-negotiated QMP session. Use as a context manager."""

    def __init__(self, socket_path: Path, *, timeout: float = 5.0) -> None:
        """Connect, read the greeting and leave negotiation mode, all within `timeout` seconds each."""
        self.path = socket_path
        self.timeout = timeout
        self._buffer = b""
        self._next_id = 0
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(socket_path))
            self.greeting = self._read_greeting()
            self.execute("qmp_capabilities")
        except OSError as exc:
            self._sock.close()
            raise ToolFailed(f"cannot talk to QMP socket {socket_path}: {exc}", hint=_HINT) from exc
        except BaseException:
            self._sock.close()
            raise

    def __enter__(self) -> Qmp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def execute(self, command: str, arguments: dict[str, object] | None = None) -> object:
        """Run `command` and return the value of its "return" member.

        Events received while waiting are skipped. An "error" reply, a timeout or
        a closed connection raises ToolFailed.
        """
        self._next_id += 1
        request_id = f"imgtool-{self._next_id}"
        request: dict[str, object] = {"execute": command, "id": request_id}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as exc:
            raise ToolFailed(f"QMP {command}: cannot send to {self.path}: {exc}", hint=_HINT) from exc
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline, command)
            if "event" in reply or reply.get("id") not in (None, request_id):
                continue
            if "error" in reply:
                raise ToolFailed(
                    f"QMP {command} failed: {_describe(reply['error'])}",
                    hint="QEMU refused the command; run with --debug to see it",
                )
            if "return" in reply:
                return reply["return"]

    def _read_greeting(self) -> dict[str, object]:
        deadline = time.monotonic() + self.timeout
        message = self._read_message(deadline, "greeting")
        if "QMP" not in message:
            raise ToolFailed(f"{self.path} does not speak QMP (first message: {sorted(message)})", hint=_HINT)
        return message

    def _read_message(self, deadline: float, waiting_for: str) -> dict[str, object]:
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _timeout(self.path, waiting_for, self.timeout)
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise _timeout(self.path, waiting_for, self.timeout) from exc
            except OSError as exc:
                raise ToolFailed(f"QMP {waiting_for}: connection to {self.path} failed: {exc}", hint=_HINT) from exc
            if not chunk:
                raise ConnectionClosed(f"QMP {waiting_for}: {self.path} closed the connection", hint=_HINT)
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise ToolFailed(f"QMP {waiting_for}: unparsable message from {self.path}", hint=_HINT) from exc
        if not isinstance(message, dict):
            raise ToolFailed(f"QMP {waiting_for}: unexpected message from {self.path}", hint=_HINT)
        return message


def _timeout(path: Path, waiting_for: str, seconds: float) -> ToolFailed:
    return ToolFailed(
        f"QMP {waiting_for}: no answer from {path} within {seconds:g}s",
        hint="the VM may be hung, or another client holds its QMP socket",
    )


def _describe(error: object) -> str:
    if isinstance(error, dict):
        return f"{error.get('class', 'Error')}: {error.get('desc', 'no description')}"
    return str(error)


def query_status(sock: Path, *, timeout: float = 5.0) -> str | None:
    """The VM's run state ("running", "paused", "shutdown", ...), or None if no QEMU listens there.

    None means the socket is absent or refuses connections (the process is gone).
    A QEMU that accepts but does not answer raises ToolFailed: it exists but is
    stuck or busy, which the caller must not mistake for "stopped".
    """
    try:
        with Qmp(sock, timeout=timeout) as qmp:
            status = qmp.execute("query-status")
    except ToolFailed as exc:
        if isinstance(exc.__cause__, FileNotFoundError | ConnectionRefusedError):
            return None
        raise
    if not isinstance(status, dict) or not isinstance(status.get("status"), str):
        raise ToolFailed(f"QMP query-status from {sock}: unexpected reply", hint=_HINT)
    state: str = status["status"]
    return state


def powerdown(sock: Path, *, timeout: float = 5.0) -> None:
    """Press the virtual power button (ACPI); the guest decides when to shut down."""
    with Qmp(sock, timeout=timeout) as qmp:
        qmp.execute("system_powerdown")


def quit(sock: Path, *, timeout: float = 5.0) -> None:
    """Make QEMU exit now (like pulling the plug; the guest gets no warning).

    QEMU may close the connection before its reply arrives; that counts as success.
    """
    with Qmp(sock, timeout=timeout) as qmp, contextlib.suppress(ConnectionClosed):
        qmp.execute("quit")


def pause(sock: Path, *, timeout: float = 5.0) -> None:
    """Pause the VM's CPUs (QMP `stop`); `cont` resumes it. The guest only sees time pass."""
    with Qmp(sock, timeout=timeout) as qmp:
        qmp.execute("stop")


def cont(sock: Path, *, timeout: float = 5.0) -> None:
    """Resume a paused VM; after an I/O error stop (rerror=stop) QEMU re-issues the failed request."""
    with Qmp(sock, timeout=timeout) as qmp:
        qmp.execute("cont")
