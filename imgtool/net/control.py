"""The client side of a network's switch: start it on demand, attach and detach VMs, ask, stop.

What a VM start does for each network NIC (the lead's hook in imgtool.vm.runtime):
    argv += nic_argv(Nic(i, mac, prepare(paths, vm)))  before QEMU starts
    attach(paths, vm, pid=qemu_pid, mac=mac)           after it started (starts the switch if needed)
and on a failed start, `detach`. A stopped or killed VM leaves by itself: the switch watches its pid.

A switch that is exiting (idle, or told to stop) closes its control socket before anything else, so
a request that finds no socket, or loses its connection, starts a new switch and asks again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from imgtool.errors import InvalidArgument, NotFound, Refused, ToolFailed
from imgtool.net.layout import NetworkPaths
from imgtool.net.nic import PortSockets
from imgtool.tools import run
from store import atomic

TIMEOUT = 5.0  # a switch answers at once; this bounds a wedged one
START_TIMEOUT = 30.0
ATTEMPTS = 3
MAX_REPLY = 1 << 20


class NotRunning(Exception):
    """No switch answers on the control socket (none runs, or it is exiting)."""


def request(paths: NetworkPaths, body: dict[str, Any], *, timeout: float = TIMEOUT) -> dict[str, Any]:
    """One request to the running switch; NotRunning if none answers, the switch's error raised typed."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(paths.control))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise NotRunning(str(exc)) from None
        sock.sendall(json.dumps(body).encode() + b"\n")
        reply = _read_reply(sock)
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise NotRunning(str(exc)) from None
    except TimeoutError:
        raise ToolFailed(f"the switch of network '{paths.name}' did not answer within {timeout:g}s",
                         hint=f"read {paths.log}; stopping it with kill $(cat {paths.pid_file}) is safe: "
                              "the next VM start brings it back with its ports") from None
    finally:
        sock.close()
    if not reply.get("ok"):
        category = Refused if reply.get("category") == "refused" else InvalidArgument
        raise category(str(reply.get("error")), hint=str(reply.get("hint") or ""))
    return reply


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    data = b""
    while not data.endswith(b"\n") and len(data) < MAX_REPLY:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if not data:
        raise NotRunning("the switch closed the connection without answering")
    reply = json.loads(data)
    if not isinstance(reply, dict):
        raise ToolFailed("the switch answered something that is not a JSON object", hint="read its log")
    return reply


def prepare(paths: NetworkPaths, vm: str) -> PortSockets:
    """The port sockets of VM `vm`, once their folder exists (QEMU binds its end there at start)."""
    if not paths.record.exists():
        raise NotFound(f"network '{paths.name}' does not exist", hint="imgtool network list")
    atomic.makedirs(paths.sockets)
    return paths.port(vm)


def start(paths: NetworkPaths) -> None:
    """Start the network's switch unless one runs; returns once it answers."""
    if not paths.record.exists():
        raise NotFound(f"network '{paths.name}' does not exist", hint="imgtool network create NAME")
    argv = [sys.executable, "-m", "imgtool.net.daemon", os.fspath(paths.folder)]
    run.run(argv, timeout=START_TIMEOUT)


def call(paths: NetworkPaths, body: dict[str, Any]) -> dict[str, Any]:
    """`request`, starting the switch first when none answers (and again if it was just exiting)."""
    for attempt in range(ATTEMPTS):
        try:
            return request(paths, body)
        except NotRunning:
            if attempt == ATTEMPTS - 1:
                break
            start(paths)
            time.sleep(0.05 * attempt)
    raise ToolFailed(f"the switch of network '{paths.name}' does not answer", hint=f"read {paths.log}")


def attach(paths: NetworkPaths, vm: str, *, pid: int, mac: str | None) -> dict[str, Any]:
    """Give running QEMU `pid` (VM `vm`) its port on the network; the switch starts if needed."""
    port: dict[str, Any] = call(paths, {"op": "attach", "vm": vm, "pid": pid, "mac": mac})["port"]
    return port


def detach(paths: NetworkPaths, vm: str) -> bool:
    """Take VM `vm` off the network now (it also leaves by itself when its QEMU exits)."""
    try:
        return bool(request(paths, {"op": "detach", "vm": vm})["detached"])
    except NotRunning:
        return False


def status(paths: NetworkPaths) -> dict[str, Any] | None:
    """The running switch's pid, ports and counters; None when no switch runs."""
    try:
        return request(paths, {"op": "status"})
    except NotRunning:
        return None


def ports(paths: NetworkPaths) -> list[str]:
    """The VMs attached now (none when no switch runs)."""
    answer = status(paths)
    return [str(p["vm"]) for p in answer["ports"]] if answer else []


def stop(paths: NetworkPaths, *, timeout: float = 10.0) -> bool:
    """Ask the switch to exit and wait (bounded) until it has; False if none was running."""
    answer = status(paths)
    if answer is None:
        return False
    pid = int(answer["pid"])
    with contextlib.suppress(NotRunning):
        request(paths, {"op": "stop"})
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        raise ToolFailed(f"the switch of network '{paths.name}' (pid {pid}) did not exit within {timeout:g}s",
                         hint=f"kill {pid}")
    return True


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: where pid 1 never reaps, an exited daemon stays one)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"]
