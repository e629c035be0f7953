"""The switch of one imgtool network: a small process that moves Ethernet frames between its VMs.

The process around this loop (lock, pid file, daemonizing) is imgtool.net.daemon, run as
`python -m imgtool.net.daemon NETWORK_FOLDER`; imgtool.net.control starts it on demand.

Behaviour (docs/DESIGN.md, "Networks between VMs"):
- One unix datagram socket per port, bound at SOCKETS/<port>.sw and connected to the VM's end
  SOCKETS/<port>.vm, which QEMU binds (`-netdev dgram`, imgtool.net.nic). Connecting means the kernel
  delivers only that QEMU's frames on the port, and wakes the switch when a full VM queue drains.
- Forwarding is imgtool.net.fabric: MAC learning, flooding of broadcast/unknown, a port bound to its
  VM's MAC drops frames from any other source.
- Bounded queues: a frame the VM cannot take yet (its socket queue is full) waits in the port's queue
  of QUEUE_FRAMES frames; beyond that it is dropped and counted, like a congested switch would.
- A port lives as long as its QEMU process: the switch holds a pidfd of it, so a VM killed with -9
  leaves at once and the others never notice. Nothing a VM sends or fails to receive stops the loop.
- Ports are written to ports.json; a switch started after a crash takes back the ports whose QEMU
  still runs (the pid is alive and its command line holds the port's socket).
- It exits when told (`stop`), on SIGTERM/SIGINT, or once no port has been attached for `idle_exit`
  seconds (the last VM left, or it was started and nobody attached).
- One switch per network: it holds an flock on switch.lock for its whole life.

Control protocol: connect to SOCKETS/control.sock, send one JSON object and a newline, read one JSON
object back ({"ok": true, ...} or {"ok": false, "error": ..., "hint": ...}). Requests:
`{"op": "attach", "vm": NAME, "pid": QEMU_PID, "mac": "52:54:00:..." | null}`,
`{"op": "detach", "vm": NAME}`, `{"op": "status"}`, `{"op": "stop"}`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import selectors
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool.errors import ImgtoolError, InvalidArgument
from imgtool.names import check_name
from imgtool.net.fabric import MAX_FRAME, Fabric
from imgtool.net.layout import NetworkPaths
from imgtool.net.nic import PortSockets, check_mac
from imgtool.tools.qemu import escape
from store import atomic

log = logging.getLogger("imgtool.switch")

QUEUE_FRAMES = 256  # per port: frames waiting for a VM whose socket queue is full
BATCH = 64  # frames read from one port before looking at the others
IDLE_EXIT = 10.0
MAX_REQUEST = 64 * 1024
CONTROL_TIMEOUT = 2.0  # a control client that sends nothing is dropped after this long


@dataclass
class Port:
    vm: str
    pid: int
    mac: str | None
    sockets: PortSockets
    sock: socket.socket
    pidfd: int
    queue: deque[bytes] = field(default_factory=deque)
    received: int = 0
    sent: int = 0
    dropped: int = 0

    def status(self) -> dict[str, Any]:
        return {"vm": self.vm, "pid": self.pid, "mac": self.mac, "received": self.received, "sent": self.sent,
                "dropped": self.dropped, "queued": len(self.queue)}


class SwitchError(ImgtoolError):
    """A control request the switch refuses; sent back to the client as error and hint."""


def _qemu_owns(pid: int, sockets: PortSockets) -> bool:
    """Whether process `pid` is a QEMU whose command line binds this port's VM end."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and os.fsencode(f"local.path={escape(sockets.vm)}") in cmdline


class Switch:
    """The event loop: the control socket, one socket and one pidfd per port."""

    def __init__(self, paths: NetworkPaths, *, idle_exit: float = IDLE_EXIT,
                 owns: Callable[[int, PortSockets], bool] = _qemu_owns) -> None:
        self.paths = paths
        self.idle_exit = idle_exit
        self.owns = owns  # is this pid the QEMU of this port? (tests give their own stand-in VMs)
        self.fabric = Fabric()
        self.ports: dict[str, Port] = {}
        self.selector = selectors.DefaultSelector()
        self.control: socket.socket | None = None
        self.stopping = False
        self.idle_since: float | None = time.monotonic()

    # --- life -------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind the control socket and take back the ports of ports.json whose QEMU still runs."""
        folder = self.paths.sockets
        atomic.makedirs(folder)
        self.paths.control.unlink(missing_ok=True)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        control.bind(str(self.paths.control))
        os.chmod(self.paths.control, 0o600)
        control.listen(16)
        control.setblocking(False)
        self.control = control
        self.selector.register(control, selectors.EVENT_READ, ("control", None))
        self._adopt()

    def run(self) -> None:
        while not self.stopping:
            for key, events in self.selector.select(timeout=1.0):
                kind, port = key.data
                try:
                    self._dispatch(kind, port, events)
                except Exception:  # one bad event must not stop the network
                    log.exception("handling %s event of port %s", kind, port.vm if port else "-")
            now = time.monotonic()
            self.fabric.expire(now)
            if self.ports:
                self.idle_since = None
            elif self.idle_since is None:
                self.idle_since = now
            elif now - self.idle_since >= self.idle_exit:
                log.info("no VM attached for %.0fs: exiting", self.idle_exit)
                self.stopping = True

    def close(self) -> None:
        """Stop answering first (a client then starts a new switch), then let go of every port."""
        if self.control is not None:
            self.selector.unregister(self.control)
            self.control.close()
            self.paths.control.unlink(missing_ok=True)
            self.control = None
        for port in list(self.ports.values()):
            self._drop(port, forget=False)
        self.selector.close()

    def _dispatch(self, kind: str, port: Port | None, events: int) -> None:
        if kind == "control":
            self._serve_control()
        elif kind == "port" and port is not None:
            if events & selectors.EVENT_READ:
                self._receive(port)
            if events & selectors.EVENT_WRITE and port.vm in self.ports:
                self._flush(port)
        elif kind == "exit" and port is not None:
            log.info("VM %s (pid %d) is gone: port removed", port.vm, port.pid)
            self._drop(port, forget=True)
            port.sockets.vm.unlink(missing_ok=True)  # QEMU is dead: its socket file is stale

    # --- ports ------------------------------------------------------------------------------

    def attach(self, vm: str, pid: int, mac: str | None) -> Port:
        """Open VM `vm`'s port for QEMU process `pid`; a port of the same name is replaced."""
        check_name(vm, "VM")
        mac = check_mac(mac) if mac is not None else None
        sockets = self.paths.port(vm)
        if not self.owns(pid, sockets):
            raise SwitchError(f"process {pid} is not a QEMU with VM '{vm}''s NIC on network '{self.paths.name}'",
                              hint="start QEMU with the argv of imgtool.net.nic.nic_argv, then attach its pid")
        if vm in self.ports:
            self._drop(self.ports[vm], forget=False)
        pidfd = os.pidfd_open(pid)
        try:
            sock = self._port_socket(sockets)
        except BaseException:
            os.close(pidfd)
            raise
        port = Port(vm, pid, mac, sockets, sock, pidfd)
        self.ports[vm] = port
        self.fabric.add(vm, bytes.fromhex(mac.replace(":", "")) if mac else None)
        self.selector.register(sock, selectors.EVENT_READ, ("port", port))
        self.selector.register(pidfd, selectors.EVENT_READ, ("exit", port))
        self._save()
        log.info("VM %s (pid %d, mac %s) attached", vm, pid, mac or "any")
        return port

    def _port_socket(self, sockets: PortSockets) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            sockets.switch.unlink(missing_ok=True)
            sock.bind(str(sockets.switch))
            os.chmod(sockets.switch, 0o600)
            sock.connect(str(sockets.vm))
        except OSError as exc:
            sock.close()
            sockets.switch.unlink(missing_ok=True)
            raise SwitchError(f"cannot open the port at {sockets.switch} to {sockets.vm}: {exc.strerror}",
                              hint="the VM's QEMU must be running with this network's NIC") from None
        return sock

    def detach(self, vm: str) -> bool:
        port = self.ports.get(vm)
        if port is None:
            return False
        self._drop(port, forget=True)
        log.info("VM %s detached", vm)
        return True

    def _drop(self, port: Port, *, forget: bool) -> None:
        """Close a port; `forget`: also take it out of ports.json (its VM left for good)."""
        self.ports.pop(port.vm, None)
        self.fabric.remove(port.vm)
        for handle in (port.sock, port.pidfd):
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(handle)
        port.sock.close()
        os.close(port.pidfd)
        port.sockets.switch.unlink(missing_ok=True)
        if forget:
            self._save()

    def _adopt(self) -> None:
        try:
            saved = json.loads(self.paths.ports.read_text()).get("ports", [])
        except (OSError, ValueError, AttributeError):
            saved = []
        for entry in saved if isinstance(saved, list) else []:
            try:
                self.attach(str(entry["vm"]), int(entry["pid"]), entry.get("mac"))
            except (ImgtoolError, OSError, KeyError, TypeError, ValueError) as exc:
                log.info("not taking back port %r: %s", entry, exc)
        self._save()

    def _save(self) -> None:
        ports = [{"vm": p.vm, "pid": p.pid, "mac": p.mac} for p in self.ports.values()]
        with contextlib.suppress(OSError, ImgtoolError):  # losing it only costs adopting after a crash
            atomic.replace(self.paths.ports, json.dumps({"ports": ports}, indent=2).encode())

    # --- frames -----------------------------------------------------------------------------

    def _receive(self, port: Port) -> None:
        for _ in range(BATCH):
            try:
                frame = port.sock.recv(MAX_FRAME + 1)
            except BlockingIOError:
                return
            except OSError as exc:  # ECONNREFUSED after the VM died: its pidfd removes the port
                log.debug("receiving from %s: %s", port.vm, exc)
                return
            port.received += 1
            for target in self.fabric.route(port.vm, frame, time.monotonic()):
                self._deliver(self.ports[target], frame)

    def _deliver(self, port: Port, frame: bytes) -> None:
        if port.queue:
            self._enqueue(port, frame)
            return
        try:
            port.sock.send(frame)
            port.sent += 1
        except BlockingIOError:
            self._enqueue(port, frame)
        except OSError as exc:
            port.dropped += 1
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOTCONN, errno.EPIPE):
                log.info("sending to %s: %s", port.vm, exc)

    def _enqueue(self, port: Port, frame: bytes) -> None:
        if len(port.queue) >= QUEUE_FRAMES:
            port.dropped += 1
            return
        if not port.queue:
            self.selector.modify(port.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, ("port", port))
        port.queue.append(frame)

    def _flush(self, port: Port) -> None:
        while port.queue:
            try:
                port.sock.send(port.queue[0])
                port.sent += 1
            except BlockingIOError:
                return
            except OSError:
                port.dropped += 1
            port.queue.popleft()
        self.selector.modify(port.sock, selectors.EVENT_READ, ("port", port))

    # --- control ----------------------------------------------------------------------------

    def _serve_control(self) -> None:
        assert self.control is not None
        try:
            conn, _ = self.control.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(CONTROL_TIMEOUT)
            try:
                reply = self.handle(_read_request(conn))
            except (ImgtoolError, OSError, ValueError) as exc:
                reply = _error_reply(exc)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """Answer one control request (see the module docstring)."""
        op = request.get("op")
        if op == "attach":
            pid, mac = request.get("pid"), request.get("mac")
            if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
                raise InvalidArgument(f"attach needs the QEMU pid, got {pid!r}", hint="pass the pid QEMU wrote")
            if mac is not None and not isinstance(mac, str):
                raise InvalidArgument(f"mac must be a string, got {mac!r}", hint="e.g. 52:54:00:12:34:56")
            port = self.attach(str(request.get("vm", "")), pid, mac)
            return {"ok": True, "port": port.status()}
        if op == "detach":
            return {"ok": True, "detached": self.detach(str(request.get("vm", "")))}
        if op == "status":
            return {"ok": True, "pid": os.getpid(), "network": self.paths.name,
                    "ports": [p.status() for p in self.ports.values()], "macs": len(self.fabric.table)}
        if op == "stop":
            self.stopping = True
            return {"ok": True, "stopping": True}
        raise InvalidArgument(f"unknown switch request {op!r}", hint="use attach, detach, status or stop")


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if len(data) > MAX_REQUEST:
        raise InvalidArgument("switch request too long", hint=f"requests are at most {MAX_REQUEST} bytes")
    request = json.loads(data.split(b"\n", 1)[0] or b"null")
    if not isinstance(request, dict):
        raise InvalidArgument("a switch request is a JSON object", hint='e.g. {"op": "status"}')
    return request


def _error_reply(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, ImgtoolError):
        return {"ok": False, "error": exc.message, "hint": exc.hint, "category": exc.category}
    return {"ok": False, "error": str(exc), "hint": "", "category": "error"}
