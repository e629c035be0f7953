"""vm exec and vm cp at the subprocess seam: the ssh/scp command lines, the guest's shell line (every
word quoted), the exit code passed through, and ssh's own failures (exit 255) mapped to one SshFailed
with its own exit code before the command ever runs. The VM "runs": its state names a live process
whose command line says qemu-system (a sleep started under that name)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtool.cli import main
from imgtool.errors import InvalidArgument, NotFound, Refused, StorageFull
from imgtool.guest import commands
from imgtool.guest.commands import Command, Place, SshFailed
from imgtool.home import Home
from imgtool.tools import run
from imgtool.vm.state import RunState
from tests.test_vmrecord import RECORD, write_record

PORT = 40022


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    made = Home.at(tmp_path / "home")
    key = tmp_path / "id_ed25519"
    key.write_text("private\n")
    seed = {"file": "seed.iso", "digest": "blake3:" + "d" * 64, "instance_id": "iid-1", "hostname": "web",
            "admin_user": "me", "ssh_key": f"{key}.pub"}
    write_record(made, "web", {**RECORD, "name": "web", "seed": seed})
    fake = tmp_path / "qemu-system-fake"
    fake.symlink_to("/bin/sleep")
    process = subprocess.Popen([str(fake), "600"])
    for _ in range(500):  # until the exec is done (before, /proc shows this Python's command line)
        if b"qemu-system" in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            break
        time.sleep(0.01)
    (made.vms / "web" / "state.json").write_bytes(
        RunState(process.pid, "tcg", PORT, str(tmp_path / "qmp.sock"), "2026-01-01T00:00:00Z", ()).dumps())
    yield made
    process.kill()
    process.wait()


class Seam:
    """run.run and run.passthrough replaced: what was asked, and the answers to give."""

    def __init__(self, probe: tuple[int, str] = (0, ""), code: int = 0) -> None:
        self.probe, self.code = probe, code
        self.ran: list[list[str]] = []
        self.passed: list[list[str]] = []

    def run(self, argv: list[str], **_: Any) -> run.Result:
        self.ran.append(list(map(str, argv)))
        return run.Result(list(map(str, argv)), self.probe[0], "", self.probe[1])

    def passthrough(self, argv: list[str]) -> int:
        self.passed.append(list(map(str, argv)))
        return self.code


@pytest.fixture
def seam(monkeypatch: pytest.MonkeyPatch) -> Seam:
    made = Seam()
    monkeypatch.setattr(run, "run", made.run)
    monkeypatch.setattr(run, "passthrough", made.passthrough)
    return made


def test_the_guest_line_quotes_every_word() -> None:
    line = commands.remote_line(Command(("echo", "a b", "$HOME;reboot"), user="root", env=(("K", "v w"),),
                                        workdir="/tmp/x y"))
    assert line == "cd '/tmp/x y' && exec sudo -n -u root -H -- env 'K=v w' echo 'a b' '$HOME;reboot'"
    assert commands.remote_line(Command(("true",))) == "exec true"
    with pytest.raises(InvalidArgument):
        commands.remote_line(Command(()))
    with pytest.raises(InvalidArgument):
        commands.remote_line(Command(("true",), user="root;x"))
    with pytest.raises(InvalidArgument):
        commands.parse_env("1X=2")


@pytest.mark.parametrize("code", [0, 1, 42, 255])
def test_exec_returns_the_commands_exit_code_after_a_good_probe(home: Home, seam: Seam, code: int) -> None:
    seam.code = code
    assert commands.execute(home, "web", Command(("sh", "-c", "exit 42"))) == code
    probe, = seam.ran
    assert probe[0] == "ssh" and probe[-2:] == ["me@127.0.0.1", "true"] and "BatchMode=yes" in probe
    argv, = seam.passed
    assert argv[:3] == ["ssh", "-p", str(PORT)] and argv[-3:] == ["-T", "me@127.0.0.1", "exec sh -c 'exit 42'"]
    assert f"UserKnownHostsFile={home.vms / 'web' / 'known_hosts'}" in argv and "HostKeyAlias=imgtool-vm-web" in argv
    assert "-i" in argv and argv[argv.index("-i") + 1].endswith("id_ed25519")


@pytest.mark.parametrize(("stderr", "says"), [
    ("ssh: connect to host 127.0.0.1 port 40022: Connection refused", "cannot reach SSH"),
    ("@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\nHost key verification failed.", "host key"),
    ("me@127.0.0.1: Permission denied (publickey).", "refused the SSH key"),
    ("kex_exchange_identification: read: Connection reset by peer", "cannot reach SSH"),
    ("something else", "ssh to VM 'web' failed"),
])
def test_an_ssh_failure_is_one_error_of_its_own_and_the_command_never_runs(home: Home, seam: Seam, stderr: str,
                                                                            says: str) -> None:
    seam.probe = (255, stderr)
    with pytest.raises(SshFailed, match=says) as caught:
        commands.execute(home, "web", Command(("true",)))
    assert caught.value.exit_code == 13 and caught.value.hint
    assert seam.passed == []


def run_cli(monkeypatch: pytest.MonkeyPatch, home: Home, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["imgtool", "--home", str(home.root), *argv])
    with pytest.raises(SystemExit) as done:
        main.run()
    return int(done.value.code or 0)


def test_the_cli_exits_with_the_commands_code_or_ssh_failures_own(home: Home, seam: Seam,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    seam.code = 42
    assert run_cli(monkeypatch, home, "vm", "exec", "web", "--env", "A=1", "--", "ls", "-l", "/") == 42
    assert seam.passed[-1][-1] == "exec env A=1 ls -l /"
    seam.probe = (255, "ssh: connect to host 127.0.0.1 port 40022: Connection refused")
    assert run_cli(monkeypatch, home, "vm", "exec", "web", "--", "true") == 13
    err = capsys.readouterr().err
    assert "imgtool: error: cannot reach SSH in VM 'web'" in err and "hint: " in err and "Traceback" not in err


def test_a_stopped_vm_is_refused_before_ssh(home: Home, seam: Seam) -> None:
    (home.vms / "web" / "state.json").unlink()
    with pytest.raises(Refused, match="not running"):
        commands.execute(home, "web", Command(("true",)))
    assert seam.ran == [] and seam.passed == []


def test_cp_builds_scp_with_modes_kept_and_checks_its_places(home: Home, seam: Seam, tmp_path: Path) -> None:
    local = tmp_path / "f.txt"
    local.write_text("x")
    vms = {"web"}
    argv = commands.copy_argv(home, [commands.parse_place(str(local), vms)], commands.parse_place("web:/tmp/", vms),
                              recursive=False)
    assert argv[:4] == ["scp", "-p", "-P", str(PORT)] and argv[-3:] == ["--", str(local), "me@127.0.0.1:/tmp/"]
    back = commands.copy_argv(home, [Place("web", "/etc/a"), Place("web", "/etc/b")], Place(None, str(tmp_path)),
                              recursive=True)
    assert back[:3] == ["scp", "-p", "-r"] and back[-3:] == ["me@127.0.0.1:/etc/a", "me@127.0.0.1:/etc/b",
                                                             str(tmp_path)]
    assert commands.parse_place("./web:x", vms) == Place(None, "./web:x")
    with pytest.raises(NotFound, match="does not exist"):
        commands.copy_argv(home, [Place(None, str(tmp_path / "missing"))], Place("web", "/tmp"), recursive=False)
    with pytest.raises(InvalidArgument, match="-r"):
        commands.copy_argv(home, [Place(None, str(tmp_path))], Place("web", "/tmp"), recursive=False)
    with pytest.raises(InvalidArgument):
        commands.copy_argv(home, [Place(None, str(local))], Place(None, "/tmp"), recursive=False)
    with pytest.raises(InvalidArgument):
        commands.copy_argv(home, [Place("web", "/a"), Place(None, str(local))], Place(None, "/tmp"), recursive=False)
    with pytest.raises(NotFound, match="VM 'db'"):
        commands.parse_place("db:/tmp", vms)


@pytest.mark.parametrize(("stderr", "error"), [
    ("scp: write remote \"/tmp/f\": No space left on device", StorageFull),
    ("scp: /etc/nope: No such file or directory", NotFound),
])
def test_cp_failures_say_what_happened(home: Home, seam: Seam, tmp_path: Path, stderr: str,
                                       error: type[Exception]) -> None:
    (tmp_path / "f").write_text("x")
    calls = iter([(0, ""), (1, stderr)])

    def answer(argv: list[str], **_: Any) -> run.Result:
        code, text = next(calls)
        return run.Result(list(map(str, argv)), code, "", text)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "run", answer)
        with pytest.raises(error):
            commands.copy(home, [Place(None, str(tmp_path / "f"))], Place("web", "/tmp/f"), recursive=False)
