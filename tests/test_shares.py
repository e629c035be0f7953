"""Shared folders without a guest: parsing, host-side checks, and the argv of virtiofsd and QEMU."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument, NotFound
from imgtool.vm import share_check, shares, virtiofs
from imgtool.vm.shares import Share

ROOT = Path(__file__).resolve().parent.parent


def test_parse_share_forms(tmp_path: Path) -> None:
    assert shares.parse_share("src:/srv/src", base=tmp_path) == Share(tmp_path / "src", "/srv/src", False)
    assert shares.parse_share("/data:/mnt/data:ro", base=tmp_path) == Share(Path("/data"), "/mnt/data", True)
    assert shares.parse_share("/data:/mnt/data:rw", base=tmp_path).readonly is False
    assert shares.parse_share("/a:b/c:/mnt/x:ro", base=tmp_path) == Share(Path("/a:b/c"), "/mnt/x", True)
    assert str(Share(Path("/d"), "/mnt/d", True)) == "/d:/mnt/d:ro"


@pytest.mark.parametrize(("text", "fragment"), [
    ("/data", "is not HOST_DIR:GUEST_PATH"),
    (":/mnt", "is not HOST_DIR:GUEST_PATH"),
    ("/data:", "is not HOST_DIR:GUEST_PATH"),
    ("/data:mnt", "not a plain absolute path"),
    ("/data:/mnt/../etc", "not a plain absolute path"),
    ("/data:/mnt/a b", "not a plain absolute path"),
    ("/data:/mnt/x,y", "not a plain absolute path"),
    ("/data:/", "not a plain absolute path"),
    ("/data:/etc", "system folder"),
    ("/data:/usr:ro", "system folder"),
    ("/da\nta:/mnt/x", "NUL or newline"),
])  # fmt: skip
def test_bad_shares_say_the_rule(text: str, fragment: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        shares.parse_share(text, base=tmp_path)
    assert fragment in str(caught.value)


def test_guest_paths_may_not_overlap() -> None:
    ok = (Share(Path("/a"), "/srv/a"), Share(Path("/b"), "/srv/b"))
    assert shares.check_shares(ok) == ok
    for second in ("/srv/a", "/srv/a/sub", "/srv"):
        with pytest.raises(InvalidArgument, match="overlapping"):
            shares.check_shares((Share(Path("/a"), "/srv/a"), Share(Path("/b"), second)))


def test_host_checks(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "store").mkdir(parents=True)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "file").write_text("x")
    (tmp_path / "link").symlink_to(folder)
    checked = share_check.check_host(Share(tmp_path / "link", "/srv/w"), home=home)
    assert checked == Share(folder.resolve(), "/srv/w", False)  # symlinks resolved once, here
    with pytest.raises(NotFound, match="does not exist"):
        share_check.check_host(Share(tmp_path / "missing", "/srv/w"), home=home)
    with pytest.raises(InvalidArgument, match="is not a folder"):
        share_check.check_host(Share(folder / "file", "/srv/w"), home=home)
    for inside in (home, home / "store", tmp_path / "home" / ".." / "home"):
        with pytest.raises(InvalidArgument, match="the imgtool home or inside it"):
            share_check.check_host(Share(inside, "/srv/w", True), home=home)
    with pytest.raises(InvalidArgument, match="contains the imgtool home"):
        share_check.check_host(Share(tmp_path, "/srv/w"), home=home)
    assert share_check.check_host(Share(tmp_path, "/srv/w", True), home=home).readonly  # read-only is fine


def test_an_unreadable_folder_is_refused_for_its_user() -> None:
    """Root reads everything, so the check runs as `nobody`: on a folder nobody may not enter, and on one
    below such a folder. A forked child drops to nobody and calls the check already loaded in memory (a
    fresh interpreter as nobody could not read a checkout or virtualenv kept in a private folder)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the check as another user")
    with tempfile.TemporaryDirectory(prefix="imgtool-share-test-") as scratch:
        top = Path(scratch)
        top.chmod(0o755)
        (top / "locked" / "below").mkdir(parents=True)
        (top / "locked").chmod(0o700)
        lines = _as_nobody([top / "locked", top / "locked" / "below"])
    assert len(lines) == 2, lines
    assert all(line.startswith("InvalidArgument") and "cannot be read by this user" in line for line in lines)


def _as_nobody(paths: list[Path]) -> list[str]:
    """What share_check says of each path when run as uid/gid 65534."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe and never returns
        try:
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            said = []
            for path in paths:
                try:
                    share_check.check_host(Share(path, "/srv/x"), home=Path("/nonexistent"))
                    said.append("accepted")
                except Exception as exc:
                    said.append(f"{type(exc).__name__} {exc}")
            os.write(write, "\n".join(said).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        text = answer.read().decode()
    os.waitpid(child, 0)
    return text.splitlines()


def test_virtiofsd_argv_root_and_user() -> None:
    share = Share(Path("/srv/data"), "/mnt/data", readonly=True)
    as_root = shares.virtiofsd_argv(share, fd=7, unprivileged=False)
    assert as_root == [
        "unshare", "--mount", "--propagation", "private", "--",
        "sh", "-c", shares.WRAPPER, "sh", "ro", "/srv/data",
        "/usr/lib/qemu/virtiofsd", "--fd=7", "-o", "source=/srv/data", "-o", "sandbox=namespace",
        "-o", "cache=auto", "-o", "log_level=warn",
    ]  # fmt: skip
    as_user = shares.virtiofsd_argv(Share(Path("/srv/data"), "/mnt/data"), fd=3, unprivileged=True)
    assert as_user[:5] == ["unshare", "--user", "--map-root-user", "--mount", "--propagation"]
    assert as_user[as_user.index("sh") + 4 : as_user.index("sh") + 6] == ["rw", "/srv/data"]


def test_the_wrapper_bind_mounts_read_only_only_for_ro_shares() -> None:
    """The script itself, run by a real sh with `echo` in place of mount and virtiofsd."""
    script = shares.WRAPPER.replace("mount --bind", "echo mount --bind")
    ro = subprocess.run(["sh", "-c", script, "sh", "ro", "/srv/d", "echo", "serve"], capture_output=True, text=True,
                        check=True)
    assert ro.stdout.splitlines() == ["mount --bind -o ro -- /srv/d /srv/d", "serve"]
    rw = subprocess.run(["sh", "-c", script, "sh", "rw", "/srv/d", "echo", "serve"], capture_output=True, text=True,
                        check=True)
    assert rw.stdout.splitlines() == ["serve"]
    failing = subprocess.run(["sh", "-c", shares.WRAPPER.replace("mount --bind", "false"), "sh", "ro", "/d", "echo",
                              "serve"], capture_output=True, text=True, check=False)
    assert failing.returncode == 1 and failing.stdout == ""  # never serves a share it could not make read-only


def test_qemu_argv_for_memory_and_devices(tmp_path: Path) -> None:
    assert shares.memory_argv(512) == ["-object", "memory-backend-memfd,id=mem0,size=512M,share=on",
                                       "-numa", "node,memdev=mem0"]
    assert shares.device_argv(1, Path("/v/a,b/fs.sock")) == [
        "-chardev", "socket,id=fs1,path=/v/a,,b/fs.sock",
        "-device", "vhost-user-fs-pci,chardev=fs1,tag=imgtool:share1",
    ]  # fmt: skip
    with pytest.raises(InvalidArgument, match="longer than"):
        shares.device_argv(0, Path("/" + "x" * 120))


def test_guest_side_mounts() -> None:
    ro = Share(Path("/d"), "/srv/d", True)
    assert shares.mount_command(0, ro) == "sudo mkdir -p /srv/d && sudo mount -t virtiofs -o ro imgtool:share0 /srv/d"
    assert shares.cloud_init_mount(0, ro) == ["imgtool:share0", "/srv/d", "virtiofs", "defaults,nofail,ro", "0", "0"]
    assert shares.cloud_init_mount(2, Share(Path("/d"), "/srv/e"))[3] == "defaults,nofail"


def test_socket_path_falls_back_for_deep_folders(tmp_path: Path) -> None:
    assert virtiofs.socket_path(tmp_path, 0) == tmp_path / "virtiofs-0.sock"
    deep = tmp_path / ("d" * 100)
    fallback = virtiofs.socket_path(deep, 1)
    assert fallback.parent.name.startswith("imgtool-") and fallback.name.endswith("-fs1.sock")
    assert len(str(fallback)) <= 107


def test_spawn_hands_over_a_descriptor_and_appends_output_to_a_file(tmp_path: Path) -> None:
    """run.spawn's pass_fds and output, which virtiofs.start relies on (a real child, a real pipe)."""
    from imgtool.tools import run

    log = tmp_path / "out.log"
    log.write_text("before\n")
    read_end, write_end = os.pipe()  # CLOEXEC, as Python makes them: spawn must hand it over anyway
    try:
        code = "import os, sys; print('out', flush=True); print('err', file=sys.stderr, flush=True); " \
               "os.write(int(sys.argv[1]), b'through-fd\\n')"
        child = run.spawn([sys.executable, "-c", code, str(write_end)], pass_fds=(write_end,), output=log)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == b"through-fd\n"
    finally:
        with contextlib.suppress(OSError):
            os.close(write_end)
    child.stop()
    assert log.read_text().splitlines() == ["before", "out", "err"]
