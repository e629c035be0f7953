"""The QMP client against a scripted server (protocol corner cases) and against a real QEMU."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgtool.errors import ToolFailed
from imgtool.tools import qmp, run
from tests.conftest import require_tools

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}
EVENT = {"event": "RTC_CHANGE", "data": {"offset": 1}, "timestamp": {"seconds": 1, "microseconds": 0}}


class Peer:
    """The server side of one accepted connection, speaking line-delimited JSON."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.file = conn.makefile("rwb")
        self.requests: list[dict[str, object]] = []

    def send(self, message: object) -> None:
        self.file.write(json.dumps(message).encode() + b"\r\n")
        self.file.flush()

    def receive(self) -> dict[str, object]:
        request = json.loads(self.file.readline())
        assert isinstance(request, dict)
        self.requests.append(request)
        return request

    def reply(self, value: object = None, *, record: list[dict[str, object]] | None = None) -> dict[str, object]:
        """Answer the next request; it is added to `record` before the answer leaves (no race with the test)."""
        request = self.receive()
        if record is not None:
            record.append(request)
        self.send({"return": {} if value is None else value, "id": request.get("id")})
        return request


Script = Callable[[Peer], object]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[[Script], Path]]:
    """Start a one-connection QMP server running `script`; yields a starter returning the socket path."""
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []
    listeners: list[socket.socket] = []

    def start(script: Script) -> Path:
        path = tmp_path / f"s{len(listeners)}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(path))
        listener.listen(1)
        listeners.append(listener)

        def serve() -> None:
            conn, _ = listener.accept()
            peer = Peer(conn)
            try:
                script(peer)
            except (OSError, ValueError):
                pass  # the client hung up early, which some tests do on purpose
            except BaseException as exc:  # an assertion in the script must fail the test
                failures.append(exc)
            finally:
                peer.file.close()
                conn.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(timeout=5)
    if failures:
        raise failures[0]


def negotiate(peer: Peer) -> None:
    peer.send(GREETING)
    request = peer.reply()
    assert request["execute"] == "qmp_capabilities"


def test_greeting_capabilities_and_a_command(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        request = peer.reply({"status": "running", "running": True})
        assert request["execute"] == "query-status"
        assert "arguments" not in request

    with qmp.Qmp(server(script), timeout=2) as session:
        assert session.greeting == GREETING
        assert session.execute("query-status") == {"status": "running", "running": True}


def test_arguments_are_sent(server: Callable[[Script], Path]) -> None:
    seen: list[dict[str, object]] = []

    def script(peer: Peer) -> None:
        negotiate(peer)
        peer.reply(record=seen)

    with qmp.Qmp(server(script), timeout=2) as session:
        session.execute("eject", {"id": "cd0", "force": True})
    assert seen[0]["arguments"] == {"id": "cd0", "force": True}


def test_events_before_the_reply_are_skipped(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        request = peer.receive()
        peer.send(EVENT)
        peer.send({"return": {"stale": True}, "id": "someone-else"})
        peer.send(EVENT)
        peer.send({"return": {"status": "paused"}, "id": request["id"]})

    with qmp.Qmp(server(script), timeout=2) as session:
        assert session.execute("query-status") == {"status": "paused"}


def test_a_reply_split_across_reads_is_reassembled(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        request = peer.receive()
        line = json.dumps({"return": {"status": "running"}, "id": request["id"]}).encode() + b"\r\n"
        for i in range(0, len(line), 7):
            peer.file.write(line[i : i + 7])
            peer.file.flush()
            time.sleep(0.001)

    with qmp.Qmp(server(script), timeout=2) as session:
        assert session.execute("query-status") == {"status": "running"}


def test_error_reply_raises_with_class_and_description(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        request = peer.receive()
        peer.send({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"},
                   "id": request["id"]})  # fmt: skip

    with qmp.Qmp(server(script), timeout=2) as session, pytest.raises(ToolFailed) as caught:
        session.execute("nope")
    assert "CommandNotFound" in str(caught.value)
    assert "nope" in str(caught.value)


def test_silence_times_out_clearly(server: Callable[[Script], Path]) -> None:
    release = threading.Event()

    def script(peer: Peer) -> None:
        negotiate(peer)
        peer.receive()
        release.wait(5)  # never answers

    with qmp.Qmp(server(script), timeout=0.3) as session, pytest.raises(ToolFailed) as caught:
        session.execute("query-status")
    release.set()
    assert "no answer" in str(caught.value)
    assert "query-status" in str(caught.value)


def test_no_greeting_times_out(server: Callable[[Script], Path]) -> None:
    release = threading.Event()
    path = server(lambda peer: release.wait(5))
    with pytest.raises(ToolFailed, match="greeting"):
        qmp.Qmp(path, timeout=0.3)
    release.set()


def test_not_qmp_is_refused(server: Callable[[Script], Path]) -> None:
    path = server(lambda peer: peer.send({"hello": "world"}))
    with pytest.raises(ToolFailed, match="does not speak QMP"):
        qmp.Qmp(path, timeout=2)


def test_connection_dropped_mid_command(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        peer.receive()

    with qmp.Qmp(server(script), timeout=2) as session, pytest.raises(qmp.ConnectionClosed):
        session.execute("query-status")


def test_quit_accepts_a_hang_up_instead_of_a_reply(server: Callable[[Script], Path]) -> None:
    def script(peer: Peer) -> None:
        negotiate(peer)
        assert peer.receive()["execute"] == "quit"

    qmp.quit(server(script), timeout=2)


def test_powerdown_sends_system_powerdown(server: Callable[[Script], Path]) -> None:
    seen: list[dict[str, object]] = []

    def script(peer: Peer) -> None:
        negotiate(peer)
        peer.reply(record=seen)

    qmp.powerdown(server(script), timeout=2)
    assert [request["execute"] for request in seen] == ["system_powerdown"]


def test_query_status_is_none_when_nothing_listens(tmp_path: Path) -> None:
    assert qmp.query_status(tmp_path / "missing.sock") is None
    stale = tmp_path / "stale.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stale))
    listener.close()  # the socket file stays, nobody listens: QEMU was killed
    assert qmp.query_status(stale) is None


def test_query_status_raises_when_something_listens_but_is_stuck(server: Callable[[Script], Path]) -> None:
    release = threading.Event()
    path = server(lambda peer: release.wait(5))
    with pytest.raises(ToolFailed):
        qmp.query_status(path, timeout=0.3)
    release.set()


# --- a real QEMU --------------------------------------------------------------


@pytest.mark.integration
def test_real_qemu_status_then_quit(tmp_path: Path) -> None:
    require_tools("qemu-system-x86_64")
    sock = tmp_path / "qmp.sock"
    qemu = run.spawn(
        ["qemu-system-x86_64", "-machine", "none", "-accel", "tcg", "-display", "none", "-nodefaults",
         "-qmp", f"unix:{sock},server=on,wait=off"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert qemu.alive(), qemu.stderr()
            assert time.monotonic() < deadline, "QMP socket never appeared"
            time.sleep(0.05)
        assert qmp.query_status(sock) == "running"
        with qmp.Qmp(sock) as session:
            version = session.execute("query-version")
            assert isinstance(version, dict) and version["qemu"]["major"] >= 7
            with pytest.raises(ToolFailed, match="CommandNotFound"):
                session.execute("no-such-command")
        qmp.quit(sock)
        deadline = time.monotonic() + 20
        while qemu.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not qemu.alive()
        assert qmp.query_status(sock) is None
    finally:
        qemu.stop()
