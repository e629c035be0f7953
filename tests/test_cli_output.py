"""Output for people and the mechanisms every command shares: help without Python types or values,
tables that fit 80 columns, values in words, global flags after the command, one JSON document,
console lines without control sequences, option values checked where they are given, the SSH
wait and host keys, shell completion."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imgtool.capture.archives import what_archive
from imgtool.cli import output
from imgtool.cli.main import build_command, hoist_global_flags
from imgtool.errors import InvalidArgument
from imgtool.flows import shapes
from imgtool.tools import ports
from imgtool.vm import options
from imgtool.vm.runtime import plain


def all_commands() -> Iterator[tuple[str, Any]]:
    root = build_command()

    def walk(path: str, command: Any) -> Iterator[tuple[str, Any]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(f"{path} {name}", sub)

    yield from walk("imgtool", root)


def help_of(path: str, command: Any) -> str:
    from typer._click import Context

    parent = None
    for part in path.split()[:-1]:
        parent = Context(build_command(), info_name=part, parent=parent)
    with Context(command, info_name=path.rsplit(maxsplit=1)[-1], parent=parent) as ctx:
        text: str = command.get_help(ctx)
    return text


@pytest.mark.parametrize("path", [p for p, _ in all_commands()])
def test_help_shows_no_python_types_or_values(path: str) -> None:
    command = dict(all_commands())[path]
    text = help_of(path, command)
    for bad in ("<str>", "<int>", "<path>", "<float>", "<list", "[default: None]", "[default: False]",
                "[default: True]", " None ", "{"):
        assert bad not in text, f"{path} --help shows {bad!r}:\n{text}"
    assert "[default: no-" not in text  # an on/off flag's default is not printed as a flag name


def test_table_fits_80_columns_and_wraps_rather_than_cuts() -> None:
    out = io.StringIO()  # piped: 80 columns
    long = "x" * 200
    verdict = "dropped: boot check failed (check again, or version update --promote); past its end of life"
    output.table(["name", "image", "state"], [["web", long, "running"], ["db", "g/d@1.0.0", None]], out=out)
    output.table(["version", "verdict"], [["1.0.0", verdict]], out=out)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["NAME", "IMAGE", "STATE"] and lines[1].endswith("running")
    assert "\u2026" not in out.getvalue()
    rows = lines[1:lines.index("VERSION  VERDICT")]
    assert "".join(line.split()[1] if line.startswith("web") else line.strip() for line in rows
                   if not line.startswith("db")) == long  # the whole value, wrapped within its column
    assert rows[-1].split()[-1] == "-"
    wrapped = lines[lines.index("VERSION  VERDICT") + 1:]
    assert " ".join(line[7:].strip() for line in wrapped) == verdict and len(wrapped) == 2


def test_table_is_sized_to_its_content_on_a_wide_terminal() -> None:
    out = io.StringIO()
    names = ["a-rather-long-vm-name-for-the-nightly-build-" + str(i) for i in range(3)]
    output.table(["name", "image"], [[n, "team/base@1.0.0"] for n in names], out=out, width=200)
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines[1:]] == names and len(lines) == 4
    assert len(lines[1]) == len(names[0]) + 2 + len("team/base@1.0.0")


def test_values_read_as_words_never_python() -> None:
    assert [output.text(v) for v in (None, "", True, False, ["a", "b"], [], 3)] == \
        ["-", "-", "yes", "no", "a, b", "-", "3"]
    out = io.StringIO()
    output.fields([("excluded", False), ("end of life", None), ("tags", ["a"]), ("digest", "d" * 100)], out=out)
    text = out.getvalue()
    assert "False" not in text and "None" not in text and "['" not in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "".join(line.split()[-1] for line in text.splitlines()[3:]) == "d" * 100  # wrapped, not cut


@pytest.mark.parametrize(("argv", "expected"), [
    (["version", "list", "g/d", "--json"], ["--json", "version", "list", "g/d"]),
    (["--json", "vm", "list"], ["--json", "vm", "list"]),
    (["vm", "ssh", "web", "--debug", "--", "--json"], ["--debug", "vm", "ssh", "web", "--", "--json"]),
    (["gc", "--json", "--json"], ["--json", "gc"]),
    (["vm", "list", "--home", "/h", "--json"], ["--json", "--home", "/h", "vm", "list"]),
    (["vm", "list", "--home=/h"], ["--home=/h", "vm", "list"]),
    (["vm", "ssh", "web", "--", "--home", "x"], ["vm", "ssh", "web", "--", "--home", "x"]),
    (["vm", "list", "--home"], ["vm", "list", "--home"]),  # no value: left for the parser to refuse
])
def test_global_flags_are_taken_after_the_command(argv: list[str], expected: list[str]) -> None:
    assert hoist_global_flags(argv) == expected


def test_one_document_with_the_error_added(capsys: pytest.CaptureFixture[str]) -> None:
    output.emit_json({"ok": False})
    output.flush_json(shapes.error(InvalidArgument("bad", hint="fix it")))
    value = json.loads(capsys.readouterr().out)
    assert value == {"ok": False, "error": {"category": "invalid-argument", "message": "bad", "hint": "fix it",
                                            "exit_code": 2}}
    output.emit_json([1, 2])
    output.flush_json(shapes.error(InvalidArgument("bad")))
    assert json.loads(capsys.readouterr().out)["result"] == [1, 2]
    output.flush_json(None)
    assert capsys.readouterr().out == ""


def test_console_lines_lose_control_sequences() -> None:
    assert plain("\x1b[1;32mREADY\x1b[0m ok\r") == "READY ok"
    assert plain("\x1b]0;title\x07login: \x1b[2J\x1b[Hx\x08y\tz") == "login: xy\tz"
    assert plain("plain text") == "plain text"
    assert plain("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r") == "SeaBIOS (version 1.16.2)"


@pytest.mark.parametrize(("text", "size"), [("20G", 20 << 30), ("512M", 512 << 20), ("1T", 1 << 40),
                                            ("1048576", 1 << 20), ("8MiB", 8 << 20), ("4 k", 4096)])
def test_sizes(text: str, size: int) -> None:
    assert options.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "1.5G", "20X", "0", "65T", "1e9"])
def test_bad_sizes_say_the_rule(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"20G|out of range"):
        options.parse_size(text)


def test_forwards() -> None:
    assert str(options.parse_forward("8080:80")) == "127.0.0.1:8080->80"
    for bad in ("80:80", "8080", "8080:0", "8080:65536", "a:b", "8080:80:1"):
        with pytest.raises(InvalidArgument, match="HOST:GUEST"):
            options.parse_forward(bad)
    with pytest.raises(InvalidArgument, match="more than once"):
        options.check_forwards((options.parse_forward("8080:80"), options.parse_forward("8080:81")))
    with pytest.raises(InvalidArgument, match="port 22"):
        options.check_forwards((options.parse_forward("2222:22"),))


@pytest.mark.parametrize(("head", "what"), [
    (b"\x1f\x8b\x08\x00", "gzip-compressed"), (b"\xfd7zXZ\x00\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd\x04", "zstd-compressed"), (b"BZh91AY&SY", "bzip2-compressed"),
    (b"PK\x03\x04", "a zip archive"), (b"\x00" * 257 + b"ustar\x0000", "a tar archive")])
def test_archives_are_known_by_their_magic(head: bytes, what: str) -> None:
    found = what_archive(head + b"\x00" * 600)
    assert found is not None and found[0] == what


def test_a_disk_is_not_an_archive() -> None:
    assert what_archive(b"\xeb\x63\x90" + b"\x00" * 509) is None  # an MBR boot sector
    assert what_archive(b"BZh9" + b"\x00" * 100) is None  # "BZh" alone is not bzip2


@pytest.fixture
def banner_server() -> Iterator[tuple[int, list[bytes]]]:
    """A 127.0.0.1 server that sends an SSH banner (or nothing, then closes), like sshd or slirp."""
    banners = [b"SSH-2.0-test\r\n"]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(10)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                if banners[0]:
                    conn.sendall(banners[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], banners
    stop.set()
    server.close()
    thread.join(timeout=10)


def test_ssh_answers_only_with_a_banner(banner_server: tuple[int, list[bytes]]) -> None:
    port, banners = banner_server
    assert ports.ssh_answers(port)
    banners[0] = b""  # accepts and closes, like QEMU's user network with no sshd in the guest
    assert not ports.ssh_answers(port, timeout=2)
    assert not ports.is_free(port)


def test_ssh_remembers_host_keys_per_vm(tmp_path: Path) -> None:
    """vm ssh's argv: the VM's own known_hosts, an alias that survives port changes, no noise."""
    import dataclasses

    from imgtool.home import Home
    from imgtool.vm import runtime
    from imgtool.vm.record import SeedInfo, load, save, vm_dir
    from imgtool.vm.state import RunState
    from tests.test_cli_publish_disks import _vm  # a VM record without QEMU

    home = Home.at(tmp_path / "home")
    home.ensure()
    _vm(home)
    save(home, dataclasses.replace(load(home, "web"), seed=SeedInfo("seed.iso", "d", "i", "web", "me", None)))
    state = vm_dir(home, "web") / "state.json"
    # Real processes: a plain sleep is not a QEMU (not running); one that runs as qemu-system-* is.
    for argv0, running in (("sleep", False), ("qemu-system-test", True)):
        process = subprocess.Popen(["bash", "-c", f"exec -a {argv0} sleep 60"])
        try:
            for _ in range(100):  # until bash has exec'd
                if Path(f"/proc/{process.pid}/cmdline").read_bytes().startswith(argv0.encode()):
                    break
                threading.Event().wait(0.05)
            state.write_bytes(RunState(process.pid, "tcg", 2222, "q", "t", ()).dumps())
            if not running:
                with pytest.raises(Exception, match="not running"):
                    runtime.ssh_argv(home, "web", [])
                continue
            argv = runtime.ssh_argv(home, "web", ["uptime"])
        finally:
            process.kill()
            process.wait()
    assert f"UserKnownHostsFile={vm_dir(home, 'web') / 'known_hosts'}" in argv
    assert "HostKeyAlias=imgtool-vm-web" in argv and "StrictHostKeyChecking=accept-new" in argv
    assert "LogLevel=ERROR" in argv and "/dev/null" not in " ".join(argv)
    assert argv[-2:] == ["me@127.0.0.1", "uptime"] and argv[argv.index("-p") + 1] == "2222"


def test_shell_completion_completes_commands(tmp_path: Path) -> None:
    env = {**os.environ, "_IMGTOOL_COMPLETE": "complete_bash", "COMP_WORDS": "imgtool vm sna", "COMP_CWORD": "2",
           "IMGTOOL_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "from imgtool.cli.main import run; run()"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.split() == ["snapshot"], done.stderr
    # From a shell, as a user runs it (the shell is detected from the process tree).
    shown = subprocess.run(["bash", "-c", f"{sys.executable} -m imgtool --show-completion; true"],
                           env={**os.environ, "SHELL": "/bin/bash"}, capture_output=True, text=True, timeout=60,
                           check=False)
    assert re.search(r"_IMGTOOL_COMPLETE", shown.stdout), shown.stderr


@pytest.mark.parametrize("setting", ["file", "under-file", "fifo", "devnull"])
def test_a_home_that_cannot_be_a_folder_is_the_users_error(tmp_path: Path, setting: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Never an internal error: the message names the setting and the file in the way."""
    from imgtool.home import Home

    plain_file = tmp_path / "f"
    plain_file.write_text("x")
    os.mkfifo(tmp_path / "fifo")
    root = {"file": plain_file, "under-file": plain_file / "sub", "fifo": tmp_path / "fifo",
            "devnull": Path("/dev/null")}[setting]
    with pytest.raises(InvalidArgument, match=r"cannot be a folder") as caught:
        Home.at(root).ensure()
    assert "(from --home)" in caught.value.message and "--home or IMGTOOL_HOME" in caught.value.hint
    monkeypatch.setenv("IMGTOOL_HOME", str(root))
    with pytest.raises(InvalidArgument, match=r"\(from \$IMGTOOL_HOME\)"):
        Home.at(None)


def test_store_hints_get_the_imgtool_command() -> None:
    from imgtool.cli.main import with_command
    from imgtool.errors import Corrupt, StorageFull

    assert with_command(Corrupt("x", hint="a deep verify of the store shows what it affects")).hint == \
        "imgtool verify --deep shows what it affects"
    assert "imgtool gc" in with_command(StorageFull("disk full", hint="free space, then retry")).hint
    assert with_command(Corrupt("y")).hint == "imgtool verify --deep names what it affects"
    kept = Corrupt("z", hint="imgtool vm delete web1")
    assert with_command(kept).hint == "imgtool vm delete web1"


def test_starting_the_cli_loads_no_domain_service() -> None:
    """Every command pays the CLI's import time: only what the command needs is loaded, inside it."""
    import subprocess
    import sys

    probe = ("import sys, imgtool.cli.main; print(sorted(m for m in sys.modules if m.startswith(("
             "'imgtool.gallery.image_versions', 'imgtool.remote.', 'imgtool.trust.', 'imgtool.guest.', "
             "'imgtool.vm.lifecycle', 'imgtool.capture.', 'httpx', 'cryptography'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
