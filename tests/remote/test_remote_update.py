"""remote update --url against two real registries (the registry "moves" from A to B), and remote
login asking for the password on a real terminal (a pty) against a real htpasswd registry.

What a move means for signatures (decided in remote/remotes.py: signatures_carry_over): a signature
binds host:port and repository, so signatures made at A that travel to B are refused there; a
version already pulled from A keeps verifying offline; the publisher's next push --sign (or its
remote's signing key) signs what B holds."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgtool.remote.remotes import Remote, signatures_carry_over
from imgtool.trust import referrers
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.conftest import PASSWORD, USER
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.registry import Registry
from tests.remote.test_cli_remote import cli_for
from tests.trust.oci import Adapter, Client

pytestmark = pytest.mark.integration


def copy_version(src: Registry, dst: Registry, repository: str, tag: str, digest: str) -> None:
    """What an operator moving a registry does: the image with skopeo, its signatures byte for byte."""
    require_tools("skopeo")
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
                    f"docker://{src.host}/{repository}:{tag}", f"docker://{dst.host}/{repository}:{tag}"],
                   check=True, capture_output=True, timeout=120)
    assert referrers.copy_all(Adapter(Client(src.host)), repository, Adapter(Client(dst.host)), repository,
                              digest) == 1


def test_a_registry_that_moves(registry: Registry, registry_b: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "publisher")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(1 << 20, seed=40))
    publisher = cli_for(src.root, tmp_path)
    publisher("key", "generate", "release")
    (tmp_path / "release.pub").write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/moves")
    publisher("trust", "signing-key", "origin", "release")
    pushed = publisher.json("push", "team", "origin")
    digest = pushed["versions"][0]["manifest"]  # type: ignore[index]

    user = cli_for(tmp_path / "user", tmp_path)
    user("remote", "add", "origin", f"{registry.url}/moves")
    user("trust", "add", "origin", str(tmp_path / "release.pub"))
    user("pull", "origin:team/base@1.0.0")
    copy_version(registry, registry_b, "moves/team/base", "1.0.0", digest)  # the registry moves to B

    moved = user.json("remote", "update", "origin", "--url", f"{registry_b.url}/moves")
    assert isinstance(moved, dict) and moved["url"] == f"{registry_b.url}/moves"
    assert moved["previous_url"] == f"{registry.url}/moves" and moved["signatures_carry_over"] is False
    assert any("push GALLERY origin --sign" in n for n in moved["notes"])
    listed = user.json("trust", "list", "origin")
    assert isinstance(listed, list) and listed[0]["policy"] == "signed"  # trust stays with the name
    assert user.json("version", "verify", "team/base@1.0.0")["policy"] == "signed"  # type: ignore[index]
    refused = user("pull", "origin:team/base@1.0.0", ok=False)  # A's signature on B: another name
    assert refused.returncode == 5 and "signs another name" in refused.stderr, refused.stderr

    said = publisher("remote", "update", "origin", "--url", f"{registry_b.url}/moves")
    assert f"{registry.url}/moves -> {registry_b.url}/moves" in said.stdout and "--sign" in said.stderr
    publisher("push", "team", "origin")  # its signing key follows the remote: signs what B holds
    assert user.json("pull", "origin:team/base@1.0.0")["status"] in ("pulled", "present")  # type: ignore[index]


def test_what_a_move_keeps(tmp_path: Path) -> None:
    a = Remote("o", "https://a.example:5000/team")
    assert not signatures_carry_over(a, Remote("o", "https://b.example:5000/team"))
    assert not signatures_carry_over(a, Remote("o", "https://a.example:5001/team"))  # another port
    assert not signatures_carry_over(a, Remote("o", "https://a.example:5000/other"))  # another repository
    assert signatures_carry_over(a, Remote("o", "https://a.example:5000/team", insecure=True))
    assert signatures_carry_over(Remote("o", "oci-layout:/mnt/usb"), Remote("o", "oci-layout:/media/usb"))
    cli = Cli(tmp_path / "home")
    cli("remote", "add", "usb", "oci-layout:/mnt/usb")
    moved = cli.json("remote", "update", "usb", "--url", "oci-layout:/media/usb")
    assert isinstance(moved, dict) and moved["signatures_carry_over"] is True and moved["notes"] == []
    for argv, code, text in ((["remote", "update", "usb"], 2, "nothing to update"),
                             (["remote", "update", "nope", "--url", "https://x.example"], 3, "does not exist"),
                             (["remote", "update", "usb", "--url", "http://x.example/p"], 2, "--insecure")):
        done = cli(*argv, ok=False)
        assert done.returncode == code and text in done.stderr, done.stderr
    assert cli.json("remote", "show", "usb")["url"] == "oci-layout:/media/usb"  # type: ignore[index]


def on_terminal(argv: list[str], env: dict[str, str], answer: str, *, timeout: float = 60.0) -> tuple[int, str]:
    """Run argv with a pty as its controlling terminal; type `answer` when it asks for a password."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its terminal is the pty
        os.execve(sys.executable, [sys.executable, "-m", "imgtool", *argv], env)
    seen, typed = b"", False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            seen += data
            if not typed and b"password" in seen.lower():
                os.write(fd, answer.encode() + b"\n")
                typed = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")


def test_login_asks_on_the_terminal(auth_registry: Registry, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = cli_for(home, tmp_path)
    cli("remote", "add", "secure", auth_registry.url)
    env = {**os.environ, "IMGTOOL_HOME": str(home), "HOME": str(tmp_path / "user")}
    code, shown = on_terminal(["remote", "login", "secure", "--username", USER], env, "wrong-password")
    assert code == 5 and "rejected" in shown and "wrong-password" not in shown  # not echoed
    code, shown = on_terminal(["remote", "login", "secure", "--username", USER], env, PASSWORD)
    assert code == 0 and "logged in to secure" in shown and PASSWORD not in shown
    assert cli.json("remote", "show", "secure")["logged_in_as"] == USER  # type: ignore[index]
    piped = cli("remote", "login", "secure", "--username", USER, ok=False)  # no terminal, no --password-stdin
    assert piped.returncode == 2 and "--password-stdin" in piped.stderr
    misspelled = cli("remote", "login", "nope", "--username", USER, ok=False)  # said before any prompt
    assert misspelled.returncode == 3
