"""A VM from a remote version it never pulled, streamed from a real registry to READY under QEMU (TCG).

The version is judged as pull judges it (here: signed by a trusted key), the VM boots over the NBD
stream server while chunks arrive, hydration finishes, the version gets its local name with pull's
provenance, verify --deep is clean, and the next start runs over an ordinary local base.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgtool.home import Home
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.liar import running as liar_running
from tests.remote.registry import Registry, running
from tests.test_vm_boot import bios_image, new_cli, ready  # noqa: F401 - bios_image is a fixture
from tests.trust.forge import Forged

pytestmark = [pytest.mark.integration, pytest.mark.boot]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    require_tools("docker-registry", "qemu-img", "qemu-system-x86_64")
    with running() as reg:
        yield reg


def alive(pid: int) -> bool:
    """A process that runs (a zombie, where nothing reaps it, does not)."""
    try:
        return bool(Path(f"/proc/{pid}/cmdline").read_bytes())
    except OSError:
        return False


def user_cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "user-home", env={"IMGTOOL_ACCEL": "tcg", "HOME": str(tmp_path / "user"),
                                            "XDG_RUNTIME_DIR": str(tmp_path / "run"), "REGISTRY_AUTH_FILE": ""})


def published(tmp_path: Path, registry: Registry, image: Path, repo: str) -> tuple[Cli, Path]:
    publisher = new_cli(tmp_path / "publisher", "generalized")
    publisher("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")
    publisher("key", "generate", "release")
    pub = tmp_path / "release.pub"
    pub.write_text(publisher("key", "export", "release").stdout)
    publisher("remote", "add", "origin", f"{registry.url}/{repo}")
    publisher("push", "lab/tiny", "origin", "--sign", "release")
    return publisher, pub


def new_server(folder: Path, old: int) -> int:
    """The pid of the stream server that replaced `old` (bounded wait)."""
    for _ in range(300):
        with contextlib.suppress(OSError, ValueError):
            pid = int((folder / "stream.pid").read_text())
            if pid != old and alive(pid):
                return pid
        time.sleep(0.2)
    raise AssertionError(f"no stream server replaced pid {old}: {(folder / 'stream.log').read_text()[-2000:]}")


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_streamed_vm_boots_hydrates_and_then_runs_on_a_local_base(
        registry: Registry, bios_image: Path, tmp_path: Path) -> None:  # noqa: F811
    _publisher, pub = published(tmp_path, registry, bios_image, "stream")
    user = user_cli(tmp_path)
    user("remote", "add", "origin", f"{registry.url}/stream")
    user("trust", "add", "origin", str(pub))
    user("vm", "new", "s1", "--image", "origin:lab/tiny@1.0.0", "--stream", "--hydrate", "on-demand",
         "--memory", "256", "--start")
    folder = user.home / "vms" / "s1"
    assert (folder / "stream.json").exists()
    assert "stream.sock" not in subprocess.run(["qemu-img", "info", "-U", str(folder / "disk-os.qcow2")],
                                               capture_output=True, text=True, check=True).stdout
    assert ready(user, "s1")["hostname"] == "s1"
    shown = user.json("vm", "show", "s1")
    assert isinstance(shown, dict)
    hydration = shown["hydration"]
    assert hydration["state"] == "streaming" and hydration["server"] is True
    assert 0 < hydration["bytes_fetched"] < hydration["bytes_total"]  # on-demand: only what the boot read
    store = Home.at(user.home).store
    assert store.get_name("versions", "lab", "tiny", "1.0.0") is None  # no local name before all is local
    assert "ok:" in user("verify", "--deep").stdout  # leases name only chunks that are there
    user("gc")  # what the VM fetched is leased, so gc keeps it

    server = int((folder / "stream.pid").read_text())
    os.kill(server, signal.SIGKILL)  # the stream server dies: its keeper starts another one by itself
    restarted = new_server(folder, server)
    assert restarted != server and alive(restarted)
    shown = user.json("vm", "show", "s1")
    assert isinstance(shown, dict) and shown["hydration"]["server"] is True and shown["state"] == "running"
    os.kill(parent_of(restarted), signal.SIGKILL)  # the keeper and the server both die: vm resume starts one
    os.kill(restarted, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(restarted) and time.monotonic() < deadline:
        time.sleep(0.2)
    user("vm", "resume", "s1")
    assert int((folder / "stream.pid").read_text()) not in (server, restarted)

    done = user.json("vm", "hydrate", "s1", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    assert not (folder / "stream.json").exists()
    version = user.json("version", "show", "lab/tiny@1.0.0")
    assert isinstance(version, dict) and version["provenance"]["pulled_from"]["remote"] == "origin"
    assert "ok:" in user("verify", "--deep").stdout
    assert not store.list_names("stream-leases")  # the version's name holds the chunks now

    user("vm", "stop", "s1", "--timeout", "20")
    user("vm", "start", "s1")
    assert ready(user, "s1")["first_boot"] == "no"
    shown = user.json("vm", "show", "s1")
    assert isinstance(shown, dict) and "nbd" not in " ".join(shown["qemu_argv"])
    base = next((user.home / "bases").glob("*.raw"))
    assert subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(base), str(bios_image)],
                          capture_output=True, check=False).returncode == 0
    user("vm", "delete", "s1")


def test_a_registry_failing_mid_boot_pauses_the_vm_until_it_answers(bios_image: Path, tmp_path: Path) -> None:  # noqa: F811
    """rerror=stop: a chunk the registry cannot give pauses the guest (QEMU's io-error), never hands it an
    I/O error; the stream server resumes it with backoff, and it boots once the registry answers."""
    require_tools("qemu-system-x86_64")
    with liar_running() as liar:
        publisher = new_cli(tmp_path / "publisher", "generalized")
        publisher("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image), "--allow-identity")
        publisher("remote", "add", "origin", liar.url)
        publisher("push", "lab/tiny", "origin")
        user = user_cli(tmp_path)
        user("remote", "add", "origin", liar.url)
        user("trust", "policy", "origin", "any")
        user("vm", "new", "s2", "--image", "origin:lab/tiny@1.0.0", "--stream", "--hydrate", "on-demand",
             "--memory", "256")
        for pack in Forged.of(liar, "lab/tiny", "1.0.0").packs():
            liar.lie("status", path=f"/v2/lab/tiny/blobs/{pack}", status=503)
        user("vm", "start", "s2")
        seen: set[str] = set()
        deadline = time.monotonic() + 180
        while "paused-waiting-for-remote" not in seen and time.monotonic() < deadline:
            shown = user.json("vm", "show", "s2")
            assert isinstance(shown, dict) and shown["state"] in ("running", "io-error")
            seen.add(shown["hydration"]["state"])
            time.sleep(0.5)
        assert "paused-waiting-for-remote" in seen
        assert "READY" not in (user.home / "vms" / "s2" / "serial.log").read_text(errors="replace")
        liar.lies.clear()
        assert ready(user, "s2")["hostname"] == "s2"
        user("vm", "delete", "s2")
