"""The switch on real unix sockets, with stand-in VMs: a datagram socket bound where QEMU would bind its
end, and a real process (sleep) whose death is the VM's. QEMU itself is in tests/test_net_boot.py.

The Switch object runs its loop in a thread; requests go through the real client (imgtool.net.control)
over the real control socket. Only the "is this pid the QEMU of this port" check is given a stand-in,
since the stand-in VMs are not QEMU.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument, Refused
from imgtool.home import Home
from imgtool.net import control, networks
from imgtool.net.layout import NetworkPaths
from imgtool.net.nic import PortSockets
from imgtool.net.switch import QUEUE_FRAMES, Switch

BROADCAST = b"\xff" * 6
WAIT = 10.0  # a bound on waiting, never an expectation


@dataclass
class StandIn:
    """A VM's end of the port (bound like QEMU's) and a process whose life is the VM's."""

    name: str
    mac: bytes
    sock: socket.socket
    process: subprocess.Popen[bytes]
    switch: Path  # where QEMU sends (remote.path): sendto, never connect, exactly like QEMU's dgram netdev

    def send(self, dst: bytes, payload: bytes = b"hello") -> None:
        self.raw(dst + self.mac + b"\x88\xb5" + payload)

    def raw(self, frame: bytes) -> None:
        self.sock.sendto(frame, str(self.switch))

    def frames(self, timeout: float = 0.5) -> list[bytes]:
        """Every frame that arrives until `timeout` passes with nothing new."""
        got: list[bytes] = []
        self.sock.settimeout(timeout)
        while True:
            try:
                got.append(self.sock.recv(65536))
            except TimeoutError:
                return got


def mac(i: int) -> bytes:
    return bytes([0x52, 0x54, 0, 0, 0, i])


def mac_text(i: int) -> str:
    return ":".join(f"{b:02x}" for b in mac(i))


@pytest.fixture
def paths(tmp_path: Path) -> NetworkPaths:
    home = Home.at(tmp_path / "home")
    networks.create(home, "lan", clock=lambda: "2026-01-01T00:00:00Z")
    p = NetworkPaths.of(home, "lan")
    p.sockets.mkdir(mode=0o700)
    return p


Run = Callable[..., Switch]


@pytest.fixture
def running(paths: NetworkPaths) -> Iterator[Run]:
    """running(idle_exit=...) -> a Switch serving in a thread; every one is stopped at teardown."""
    started: list[tuple[Switch, threading.Thread]] = []

    def start(idle_exit: float = 60.0, owns: Callable[[int, PortSockets], bool] = lambda pid, s: True) -> Switch:
        switch = Switch(paths, idle_exit=idle_exit, owns=owns)
        switch.open()
        def serve() -> None:
            switch.run()
            switch.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        started.append((switch, thread))
        return switch

    yield start
    for switch, thread in started:
        switch.stopping = True
        thread.join(timeout=WAIT)


@pytest.fixture
def stand_ins(paths: NetworkPaths) -> Iterator[Callable[[str, int], StandIn]]:
    made: list[StandIn] = []

    def make(name: str, i: int) -> StandIn:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ports = paths.port(name)
        sock.bind(str(ports.vm))
        process = subprocess.Popen(["sleep", "600"])
        made.append(StandIn(name, mac(i), sock, process, ports.switch))
        return made[-1]

    yield make
    for s in made:
        s.process.kill()
        s.process.wait()
        s.sock.close()


def attach(paths: NetworkPaths, vm: StandIn, i: int) -> None:
    control.request(paths, {"op": "attach", "vm": vm.name, "pid": vm.process.pid, "mac": mac_text(i)})


def wait_until(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_frames_flood_then_go_where_the_mac_was_learned(paths: NetworkPaths, running: Run,
                                                        stand_ins: Callable[[str, int], StandIn]) -> None:
    running()
    a, b, c = stand_ins("a", 1), stand_ins("b", 2), stand_ins("c", 3)
    for i, vm in enumerate((a, b, c), start=1):
        attach(paths, vm, i)
    a.send(BROADCAST, b"who-has")
    assert [f[12:] for f in b.frames()] == [b"\x88\xb5who-has"] == [f[12:] for f in c.frames()]
    b.send(mac(1), b"is-at")
    assert [f[6:12] for f in a.frames()] == [mac(2)] and c.frames() == []
    a.send(mac(2), b"unicast")
    assert b.frames()[0].endswith(b"unicast") and c.frames() == []
    c.send(BROADCAST[:6], b"x")  # c is heard by both
    assert len(a.frames()) == 1 and len(b.frames()) == 1
    a.raw(mac(2) + mac(9) + b"\x88\xb5spoof")  # a poses as another MAC: dropped
    assert b.frames() == []
    status = control.status(paths)
    assert status is not None and [p["vm"] for p in status["ports"]] == ["a", "b", "c"]
    assert json.loads(paths.ports.read_text())["ports"][0] == {"vm": "a", "pid": a.process.pid, "mac": mac_text(1)}


def test_a_vm_killed_with_sigkill_leaves_and_the_others_go_on(paths: NetworkPaths, running: Run,
                                                              stand_ins: Callable[[str, int], StandIn]) -> None:
    running()
    a, b, c = stand_ins("a", 1), stand_ins("b", 2), stand_ins("c", 3)
    for i, vm in enumerate((a, b, c), start=1):
        attach(paths, vm, i)
    a.process.send_signal(signal.SIGKILL)
    wait_until(lambda: control.ports(paths) == ["b", "c"])
    assert not paths.port("a").switch.exists() and not paths.port("a").vm.exists()
    assert [p["vm"] for p in json.loads(paths.ports.read_text())["ports"]] == ["b", "c"]
    b.send(BROADCAST, b"still-there")
    assert c.frames()[0].endswith(b"still-there")
    c.send(mac(2), b"reply")
    assert b.frames()[0].endswith(b"reply")


def test_a_vm_that_does_not_read_fills_only_its_own_queue(paths: NetworkPaths, running: Run,
                                                          stand_ins: Callable[[str, int], StandIn]) -> None:
    running()
    a, b, slow = stand_ins("a", 1), stand_ins("b", 2), stand_ins("slow", 3)
    for i, vm in enumerate((a, b, slow), start=1):
        attach(paths, vm, i)
    slow.send(BROADCAST, b"hi")  # learned, then never reads again
    a.frames(0.2)
    b.frames(0.2)
    for n in range(QUEUE_FRAMES * 2):
        a.send(mac(3), n.to_bytes(4, "big"))
    wait_until(lambda: _port(paths, "slow")["dropped"] > 0)
    assert _port(paths, "slow")["queued"] <= QUEUE_FRAMES
    a.send(mac(2), b"unaffected")
    assert b.frames()[0].endswith(b"unaffected")
    got = slow.frames(0.5)  # what was queued arrives, in order, once the VM reads
    numbers = [int.from_bytes(f[14:18], "big") for f in got]
    assert numbers == sorted(numbers) and QUEUE_FRAMES <= len(numbers) < QUEUE_FRAMES * 2


def _port(paths: NetworkPaths, vm: str) -> dict[str, int]:
    status = control.status(paths)
    assert status is not None
    port: dict[str, int] = next(p for p in status["ports"] if p["vm"] == vm)
    return port


def test_bad_requests_get_errors_and_the_switch_goes_on(paths: NetworkPaths, running: Run,
                                                       stand_ins: Callable[[str, int], StandIn]) -> None:
    running()
    vm = stand_ins("a", 1)
    for body, fragment in (({"op": "reboot"}, "unknown switch request"),
                           ({"op": "attach", "vm": "a", "pid": "12"}, "needs the QEMU pid"),
                           ({"op": "attach", "vm": "a", "pid": True}, "needs the QEMU pid"),
                           ({"op": "attach", "vm": "a", "pid": vm.process.pid, "mac": "ff:ff:ff:ff:ff:ff"}, "unicast"),
                           ({"op": "attach", "vm": "../x", "pid": vm.process.pid}, "not allowed"),
                           ({"op": "attach", "vm": "nosock", "pid": vm.process.pid}, "cannot open the port")):
        with pytest.raises(InvalidArgument, match=fragment):
            control.request(paths, body)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(str(paths.control))
        raw.sendall(b"not json\n")
        assert json.loads(raw.recv(4096))["ok"] is False
    assert control.status(paths) is not None and control.detach(paths, "nobody") is False


def test_attach_refuses_a_pid_that_is_not_the_ports_qemu(paths: NetworkPaths, running: Run,
                                                         stand_ins: Callable[[str, int], StandIn]) -> None:
    from imgtool.net.switch import _qemu_owns

    running(owns=_qemu_owns)
    vm = stand_ins("a", 1)
    with pytest.raises(InvalidArgument, match="is not a QEMU with VM 'a'"):
        control.request(paths, {"op": "attach", "vm": "a", "pid": vm.process.pid})


def test_idle_switch_exits_and_a_new_one_takes_back_live_ports(paths: NetworkPaths, running: Run,
                                                               stand_ins: Callable[[str, int], StandIn]) -> None:
    first = running(idle_exit=0.3)
    a, b = stand_ins("a", 1), stand_ins("b", 2)
    attach(paths, a, 1)
    attach(paths, b, 2)
    first.stopping = True  # as if it crashed: ports.json keeps both
    wait_until(lambda: not paths.control.exists())
    b.process.kill()
    b.process.wait()
    running(idle_exit=0.3)  # b's QEMU is gone: only a comes back
    assert control.ports(paths) == ["a"]
    assert paths.port("a").switch.exists() and not paths.port("b").switch.exists()
    a.process.kill()
    wait_until(lambda: not paths.control.exists())  # last VM left: the switch exited by itself


def test_the_daemon_starts_on_demand_answers_and_stops(paths: NetworkPaths,
                                                       stand_ins: Callable[[str, int], StandIn]) -> None:
    vm = stand_ins("a", 1)
    try:
        with pytest.raises(InvalidArgument, match="not a QEMU"):  # started on demand, then refuses sleep
            control.attach(paths, "a", pid=vm.process.pid, mac=None)
        status = control.status(paths)
        assert status is not None and status["ports"] == [] and status["network"] == "lan"
        pid = int(paths.pid_file.read_text())
        assert pid == status["pid"] and pid != os.getpid()
        control.start(paths)  # a second start finds it running and returns
        assert control.status(paths) == status
        with pytest.raises(Refused, match="is used by"):
            networks.delete(Home.at(paths.folder.parents[1]), "lan", used_by=["a"])
    finally:
        assert control.stop(paths) is True
    assert control.status(paths) is None and not paths.pid_file.exists()
    assert "started" in paths.log.read_text() and "stopped" in paths.log.read_text()
    assert control.stop(paths) is False
