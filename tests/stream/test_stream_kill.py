"""kill -9 of a stream at many points (issue 21, Faults): `vm new --stream`, the stream server, QEMU.

One real registry and one signed version (the tiny boot image plus a 64 MiB data disk of random bytes,
so background hydration spans several requests and several keeps) serve the whole module, through the
counting proxy of tests/remote/proxy.py, which SIGKILLs a process at the k-th request or b body bytes
after it is armed. Every moment is an event (a request, a byte count, a file, a keep waiting at the store
lock, a pack half written under SIGSTOP), never a delay. After every kill: `verify --deep` is clean, the
version has no local name while a chunk is missing, and the next command (`vm new` again, `vm hydrate`,
`vm resume`, `vm start`) carries on from what was kept; at the end the version is named as pull names
it and its disks equal the files it was published from. One boot reaches READY (TCG); the others are
killed before it or not waited for.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool import maintenance
from imgtool.home import Home
from imgtool.vm.record import STREAM_LEASES
from tests.cli import Cli
from tests.conftest import require_tools
from tests.remote.proxy import Switch, proxy
from tests.remote.registry import running
from tests.stream.test_stream_boot import alive, user_cli
from tests.test_vm_boot import bios_image, new_cli, ready  # noqa: F401 - bios_image is a fixture

pytestmark = [pytest.mark.integration, pytest.mark.boot]
IMAGE = "origin:lab/tiny@1.0.0"
DATA_BYTES = 64 << 20  # random, so incompressible: four flushes of hydration.FLUSH_BYTES (16 MiB)
MiB = 1 << 20


@dataclass
class Origin:
    url: str  # the proxy's, in front of the registry
    switch: Switch
    key: Path  # the publisher's public key: the version is signed, and judged as pull judges it
    os_disk: Path
    data_disk: Path


@pytest.fixture(scope="module")
def origin(bios_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:  # noqa: F811
    require_tools("docker-registry", "qemu-img", "qemu-system-x86_64")
    folder = tmp_path_factory.mktemp("origin")
    data = folder / "data.raw"
    data.write_bytes(random.Random(21).randbytes(DATA_BYTES))
    with running() as registry, proxy(registry.url) as (url, switch):
        publisher = new_cli(folder / "publisher", "generalized")
        publisher("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(bios_image),
                  "--data-disk", f"0={data}", "--allow-identity", "--allow-unaudited")
        publisher("key", "generate", "release")
        key = folder / "release.pub"
        key.write_text(publisher("key", "export", "release").stdout)
        publisher("remote", "add", "origin", f"{url}/kill")  # signatures name the host the user sees
        publisher("push", "lab/tiny", "origin", "--sign", "release")
        yield Origin(f"{url}/kill", switch, key, bios_image, data)


def user_of(origin: Origin, tmp_path: Path) -> Cli:
    user = user_cli(tmp_path)
    user("remote", "add", "origin", origin.url)
    user("trust", "add", "origin", str(origin.key))
    return user


def wait_for(check: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.005)


def server_pid(folder: Path) -> int | None:
    try:
        pid = int((folder / "stream.pid").read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def keeperless(pid: int | None) -> int:
    """The stream server `pid`, its keeper (the parent that starts it again when it dies while the VM
    streams) killed first, so that killing the server is final and the next command must resume."""
    assert pid is not None
    keeper = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    if b"imgtool.stream.serve" in Path(f"/proc/{keeper}/cmdline").read_bytes():
        killed(keeper)
    return pid


def killed(pid: int) -> None:
    """SIGKILL (if still needed) and wait until it is gone."""
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), f"pid {pid} to die", 30)


def status(user: Cli, vm: str) -> dict[str, object]:
    shown = user.json("vm", "show", vm)
    assert isinstance(shown, dict) and isinstance(shown["hydration"], dict)
    return shown["hydration"]


def leases(user: Cli, vm: str) -> list[tuple[str, ...]]:
    return [key for key, _ in Home.at(user.home).store.list_names(STREAM_LEASES, vm)]


def clean_and_unnamed(user: Cli) -> None:
    """What every kill must leave: a store whose deep verify (imgtool verify --deep's, in process: this runs
    after every kill) finds every name, leases included, pointing at chunks that are there, and no local
    name for a version still missing chunks."""
    home = Home.at(user.home)
    report, _hit = maintenance.verify(home, deep=True)
    assert report.ok, report.problems
    assert home.store.get_name("versions", "lab", "tiny", "1.0.0") is None


def spawn(user: Cli, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "imgtool", *args], env=user.env_for(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_vm_new_killed_while_judging_or_making_the_vm_leaves_nothing_half_made(
        origin: Origin, tmp_path: Path) -> None:
    user = user_of(origin, tmp_path)
    new = ("vm", "new", "v", "--image", IMAGE, "--stream", "--hydrate", "on-demand")
    user("vm", "new", "w", "--image", IMAGE, "--stream", "--hydrate", "on-demand")
    origin.switch.arm()
    user("vm", "new", "x", "--image", IMAGE, "--stream", "--hydrate", "on-demand")
    judged = origin.switch.requests  # what a judgment asks once the remote is known (the first one asked more)
    assert judged >= 4, judged
    for at in (1, judged // 2, judged):  # the judgment's first, middle and last request
        origin.switch.arm(at_request=at)
        victim = spawn(user, *new)
        origin.switch.aim(victim.pid)
        assert victim.wait(60) == -signal.SIGKILL, f"vm new was not killed at request {at}"
        assert not (user.home / "vms" / "v").exists()  # judged before anything is made
        clean_and_unnamed(user)
    origin.switch.reset()

    victim = spawn(user, *new)
    folder = user.home / "vms" / "v"
    wait_for(folder.exists, "the VM folder")
    os.kill(victim.pid, signal.SIGSTOP)  # frozen where it is, then killed there
    record_made = (folder / "vm.json").exists()
    killed(victim.pid)
    victim.wait(10)
    assert not record_made, "vm new had finished before it was killed"
    listed = user.json("vm", "list")
    assert isinstance(listed, list) and [(v["name"], v["state"]) for v in listed] == \
        [("v", "incomplete"), ("w", "stopped"), ("x", "stopped")]
    clean_and_unnamed(user)
    user(*new)  # the same name again: the leftover folder is taken over
    assert status(user, "v")["state"] == "starting" and not leases(user, "v")
    clean_and_unnamed(user)
    assert "ok:" in user("verify", "--deep").stdout


def holds_store_lock(pid: int, locks: Path) -> bool:
    """Whether the process has the store's lock file open: it does only inside store.writing() (a keep)."""
    target = os.fspath(locks / "store.lock")
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def stopped(pid: int) -> bool:
    """Whether every thread of the process is stopped (SIGSTOP), or it is gone."""
    try:
        return all(Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tTXZ"
                   for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True


def stepped_until(pid: int, check: Callable[[], bool], what: str, step: float = 0.0005) -> bool:
    """Run a SIGSTOPped process in slices of `step` seconds, looking at the store between slices, until
    `check` holds (True; it is left stopped there) or it exits (False). Deterministic where a poll from
    outside is not: nothing moves while we look, and no slice is long enough to step over a pack's write."""
    deadline = time.monotonic() + 60
    while alive(pid):
        wait_for(lambda: stopped(pid), f"pid {pid} to stop")
        if check():
            return True
        assert time.monotonic() < deadline, f"gave up stepping pid {pid} to {what}"
        os.kill(pid, signal.SIGCONT)
        time.sleep(step)
        os.kill(pid, signal.SIGSTOP)
    return False


def writing_a_pack(packs: Path, before: set[Path]) -> bool:
    """A keep in the middle of its pack: a new temporary file, or a new pack whose index is not written yet
    (`before`: what an earlier kill may have left, which does not count)."""
    return any(p.name.startswith(".tmp-") or (p.suffix == ".pack" and not p.with_suffix(".idx").exists())
               for p in set(packs.glob("*/*")) - before)


def hydrate_killed_at(user: Cli, origin: Origin, vm: str, at_byte: int) -> None:
    """`vm hydrate VM` (its server runs in the background), SIGKILLed by the proxy `at_byte` bytes on."""
    origin.switch.arm(at_byte=at_byte)
    user("vm", "hydrate", vm)
    pid = keeperless(server_pid(user.home / "vms" / vm))
    origin.switch.aim(pid)
    wait_for(lambda: not alive(pid), "the stream server to be killed")
    origin.switch.reset()


def test_a_stream_server_killed_mid_hydration_resumes_from_what_it_kept(origin: Origin, tmp_path: Path) -> None:
    user = user_of(origin, tmp_path)
    for vm in ("h", "d"):
        user("vm", "new", vm, "--image", IMAGE, "--stream", "--hydrate", "on-demand")
    home = Home.at(user.home)

    # The points that need the most still missing come first: h has 79 MiB to fetch, and each kill may
    # leave at most one keep (16 MiB and a request) behind it.
    hydrate_killed_at(user, origin, "h", 8 * MiB)  # mid-fetch, at most a periodic keep behind it
    clean_and_unnamed(user)
    hydrate_killed_at(user, origin, "h", 24 * MiB)  # mid-fetch, a keep or so behind it
    clean_and_unnamed(user)

    user("vm", "hydrate", "h")  # stepped from where it listens to its first pack write, and killed there
    writer = keeperless(server_pid(user.home / "vms" / "h"))
    os.kill(writer, signal.SIGSTOP)
    packs = home.store.layout.packs
    before = set(packs.glob("*/*"))
    caught = stepped_until(writer, lambda: writing_a_pack(packs, before), "a pack half written")
    killed(writer)
    assert caught, "the keep was not caught writing its pack"
    clean_and_unnamed(user)
    swept = user.json("gc")  # what the half-written pack left is garbage gc knows, nothing a name needs
    assert isinstance(swept, dict)
    assert swept["counts"].get("leftover", 0) + swept["counts"].get("orphan-pack", 0) >= 1, swept["counts"]
    clean_and_unnamed(user)

    user("vm", "hydrate", "h")
    pid = keeperless(server_pid(user.home / "vms" / "h"))
    with home.store.exclusive():  # as a gc would: the server's next keep waits for the store, chunks in hand
        wait_for(lambda: holds_store_lock(pid, home.store.layout.locks), "a keep waiting for the store")
        killed(pid)
    clean_and_unnamed(user)

    user("vm", "hydrate", "d")  # a second VM on the same version, deleted mid-hydration
    deleting = server_pid(user.home / "vms" / "d")
    assert deleting is not None
    os.kill(deleting, signal.SIGSTOP)  # held hydrating (not finished by chunks others left in the spool)
    held = home.store.list_names(STREAM_LEASES, "d")
    assert held  # its server leased what the store held at once (its first keep)
    user("vm", "delete", "d")
    os.kill(deleting, signal.SIGCONT)  # it goes on, finds its VM gone, and must not lease anything again
    wait_for(lambda: not alive(deleting), "d's stream server to end with it")
    assert leases(user, "d") == []
    clean_and_unnamed(user)
    for key, digest in held:  # what a vm delete killed after the record went (before the leases) leaves
        home.store.set_name(STREAM_LEASES, "d", *key, target=digest)
    gc = user.json("gc")
    assert isinstance(gc, dict) and gc["counts"].get("stream-lease") == len(held)
    assert leases(user, "d") == [] and sorted(leases(user, "h")) == [("lun0",), ("os",)]
    clean_and_unnamed(user)

    origin.switch.arm(at_byte=4 * MiB)  # the server alone this time: its keeper starts another, which goes on
    user("vm", "hydrate", "h")
    alone = server_pid(user.home / "vms" / "h")
    assert alone is not None
    origin.switch.aim(alone)
    wait_for(lambda: not alive(alone), "the stream server to be killed")
    origin.switch.reset()
    wait_for(lambda: server_pid(user.home / "vms" / "h") not in (None, alone) or
             home.store.get_name("versions", "lab", "tiny", "1.0.0") is not None, "its keeper to start another")
    done = user.json("vm", "hydrate", "h", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    assert 0 < done["hydration"]["bytes_fetched"] < done["hydration"]["bytes_total"]  # it resumed, not restarted
    assert leases(user, "h") == []  # the version's name holds the chunks now
    assert "ok:" in user("verify", "--deep").stdout
    version = user.json("version", "show", "lab/tiny@1.0.0")
    assert isinstance(version, dict) and version["provenance"]["pulled_from"]["remote"] == "origin"
    exported_equal(user, origin)


def exported_equal(user: Cli, origin: Origin) -> None:
    """The named version's disks are byte for byte the files it was published from."""
    for disk, source in (("os", origin.os_disk), ("0", origin.data_disk)):
        out = user.home.parent / f"export-{disk}.raw"
        user("version", "export", "lab/tiny@1.0.0", str(out), *(() if disk == "os" else ("--disk", disk)))
        same = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(out), str(source)],
                              capture_output=True, text=True, check=False)
        assert same.returncode == 0, same.stdout + same.stderr
        out.unlink()


def fetched(folder: Path) -> int:
    """Chunks the VM's current stream server has fetched (its status file; 0 before it wrote one)."""
    try:
        return int(json.loads((folder / "stream-status.json").read_text())["chunks_fetched"])
    except (OSError, ValueError, KeyError):
        return 0


def booted(folder: Path) -> bool:
    return "READY" in (folder / "serial.log").read_text(errors="replace")


def test_qemu_and_its_stream_server_killed_mid_boot_and_mid_hydration(origin: Origin, tmp_path: Path) -> None:
    user = user_of(origin, tmp_path)
    folder = user.home / "vms" / "q"
    maker = spawn(user, "vm", "new", "q", "--image", IMAGE, "--stream", "--hydrate", "on-demand", "--memory", "256",
                  "--start")
    wait_for(lambda: server_pid(folder) is not None, "vm new's stream server to listen")
    killed(maker.pid)  # vm new, once its stream server listens (its QEMU not started, or not recorded)
    maker.wait(10)
    clean_and_unnamed(user)

    user("vm", "start", "q")
    wait_for(lambda: fetched(folder) > 0, "the boot's first chunks")
    first = keeperless(server_pid(folder))
    assert not booted(folder)
    killed(first)  # the server, mid-boot: QEMU holds the guest's reads (reconnect-delay) meanwhile
    user("vm", "resume", "q")  # a new server; QEMU reconnects to it
    second = server_pid(folder)
    assert second not in (None, first) and not booted(folder)
    killed(int((folder / "qemu.pid").read_text()))  # QEMU, mid-boot: its server follows it out
    wait_for(lambda: server_pid(folder) is None, "the server to follow QEMU")
    clean_and_unnamed(user)

    user("vm", "start", "q")  # starts again, and boots
    assert ready(user, "q")["hostname"] == "q"
    hydrate_killed_at(user, origin, "q", 12 * MiB)  # the server, mid background hydration (guest running)
    clean_and_unnamed(user)
    origin.switch.arm(at_byte=12 * MiB)
    user("vm", "resume", "q")  # a new server, which hydrates on (stream.hydrate is still asked for)
    qemu = int((folder / "qemu.pid").read_text())
    origin.switch.aim(qemu)  # QEMU dies 12 MiB into the resumed hydration
    wait_for(lambda: not alive(qemu) and server_pid(folder) is None, "QEMU killed and its server gone")
    origin.switch.reset()
    clean_and_unnamed(user)

    user("vm", "start", "q")
    done = user.json("vm", "hydrate", "q", "--wait")
    assert isinstance(done, dict) and done["hydration"]["state"] == "complete"
    assert 0 < done["hydration"]["bytes_fetched"] < done["hydration"]["bytes_total"]  # it resumed, not restarted
    assert leases(user, "q") == []
    assert "ok:" in user("verify", "--deep").stdout
    exported_equal(user, origin)
    user("vm", "delete", "q")
