"""Concurrency: real imgtool processes racing each other, gc and optimize.

- Four processes publish different versions into one definition while gc and optimize run in
  a loop: every publish lands completely (content equal to its source) or fails with one clear
  line, and nothing that landed is lost.
- Exports and VM base builds run while gc repacks and optimize rewrites the very packs they
  read: every output is byte-identical to its source.
- Two processes publish the same version: exactly one wins, the other gets "already exists".
- Two `vm new` with the same name: exactly one wins, and its VM is complete.
- Locks wait with a timeout and the error names who holds them (pid, command, mode).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from imgtool.home import Home
from store.errors import Locked
from store.lock import file_lock
from store.materialize import materialize
from tests.conftest import require_tools
from tests.reliability.harness import (
    CAMPAIGN,
    CHUNK,
    Run,
    Zygote,
    fake_ssh_key,
    random_pieces,
    record_figures,
    sha256,
    verify_problems,
    vm_problems,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

PUBLISHERS = 4
VERSIONS_EACH = 6 if CAMPAIGN else 3
RACES = 10 if CAMPAIGN else 3
DISK = 8 << 20
DEADLINE = 300.0  # a bound on the whole race, so a deadlock fails instead of hanging


def imgtool(home: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "IMGTOOL_HOME": str(home), "IMGTOOL_ACCEL": "tcg"}
    return subprocess.Popen([sys.executable, "-m", "imgtool", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], args: list[str]) -> Run:
    stdout, stderr = proc.communicate(timeout=DEADLINE)
    return Run(args, proc.returncode, stdout, stderr)


def run_cli(home: Path, *args: str) -> Run:
    return finish(imgtool(home, *args), list(args))


def make_home(home: Path, definition: str = "d") -> None:
    """A gallery and a generalized definition; the disks published into it here are random pieces,
    no guest OS the audit can read, so every publish gives --allow-unaudited."""
    for args in (["gallery", "create", "g"],
                 ["definition", "create", f"g/{definition}", "--publisher", "p", "--offer", definition,
                  "--sku", "s", "--os-type", "linux", "--os-state", "generalized"]):
        done = run_cli(home, *args)
        assert done.status == 0, done.describe()


def content_of(home: Path, version: str, work: Path) -> str:
    """sha256 of a version's OS disk as stored (materialized and verified chunk by chunk)."""
    store = Home.at(home).store
    record = store.get_name("versions", "g", "d", version)
    assert record is not None, version
    disk = store.get_manifest(record)["disks"][0]["digest"]
    out = work / f"check-{version}.raw"
    materialize(store, store.get_disk(disk), out)
    try:
        return sha256(out)
    finally:
        out.unlink()


def test_four_publishers_and_a_gc_optimize_loop(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_home(home)
    rng = random.Random(7)
    common = random_pieces(rng, DISK, 8)  # every source shares these chunks: dedup races too
    sources: dict[str, tuple[Path, str]] = {}
    for p in range(PUBLISHERS):
        for n in range(VERSIONS_EACH):
            version = f"{p + 1}.0.{n}"
            # own pieces start mid-chunk (chunks shared with `common` differ), clipped to the disk
            pieces = {**common, **{o + CHUNK // 2: b[:DISK - o - CHUNK // 2]
                                   for o, b in random_pieces(rng, DISK, 4).items()}}
            path = write_raw(work / f"{version}.raw", DISK, pieces)
            sources[version] = (path, sha256(path))

    results: dict[str, Run] = {}
    gc_runs: list[Run] = []
    done = threading.Event()

    def publisher(p: int) -> None:
        for n in range(VERSIONS_EACH):
            version = f"{p + 1}.0.{n}"
            args = ["publish", "g/d", "--version", version, "--os-disk", str(sources[version][0]),
                    "--allow-unaudited"]
            results[version] = run_cli(home, *args)

    def collector() -> None:
        while not done.is_set():
            gc_runs.append(run_cli(home, "gc", "--keep-captures", "0", "--wait", "120"))
            gc_runs.append(run_cli(home, "optimize", "--wait", "120"))

    threads = [threading.Thread(target=publisher, args=(p,)) for p in range(PUBLISHERS)]
    gc_thread = threading.Thread(target=collector)
    gc_thread.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    done.set()
    gc_thread.join(DEADLINE)
    assert not any(t.is_alive() for t in [*threads, gc_thread]), "a process hung"

    figures: Counter[str] = Counter(gc_runs=len(gc_runs))
    for run in gc_runs:
        assert run.status == 0, run.describe()
    store = Home.at(home).store
    for version, run in sorted(results.items()):
        named = store.get_name("versions", "g", "d", version)
        if run.status == 0:
            figures["publishes landed"] += 1
            assert content_of(home, version, work) == sources[version][1], f"{version} lost or changed"
        else:  # a failure is clear and leaves nothing named
            figures["publishes refused"] += 1
            assert run.one_line_error(), run.describe()
            assert named is None, f"{version} failed but is named"
    final = run_cli(home, "gc")
    assert final.status == 0, final.describe()
    assert verify_problems(home) == []
    listed = {key[0] for key, _ in store.list_names("versions", "g", "d")}
    assert listed == {v for v, r in results.items() if r.status == 0}
    record_figures("concurrency: 4 publishers + gc/optimize loop", dict(figures))
    assert figures["gc_runs"] >= 2


def test_exports_and_base_builds_while_gc_repacks_and_optimize_rewrites(tmp_path: Path) -> None:
    """Readers of packs against a collector that deletes them: each round publishes X and Y (Y holds
    half of X's chunks, so they share X's pack), deletes X, and runs gc (which repacks that pack:
    Y's chunks move, the old pack goes) or optimize (which rewrites every fresh pack); meanwhile
    readers export every Y and build VM bases on it, again and again, and compare the bytes."""
    require_tools("qemu-img")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_home(home)
    key = work / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    rng = random.Random(13)
    expected: dict[str, str] = {}  # Y version -> sha256 of its disk, once it is published
    collector_runs: list[Run] = []
    reads: list[tuple[str, Run, str | None]] = []  # (version, run, sha256 of what it wrote)
    done = threading.Event()

    def collector() -> None:
        for n in range(RACES * 2):
            pieces = random_pieces(rng, DISK, 8)
            x = write_raw(work / f"x{n}.raw", DISK, pieces)
            y = write_raw(work / f"y{n}.raw", DISK, dict(sorted(pieces.items())[:4]))
            for version, source in ((f"1.0.{n}", x), (f"2.0.{n}", y)):
                published = run_cli(home, "publish", "g/d", "--version", version, "--os-disk", str(source),
                                    "--allow-unaudited")
                assert published.status == 0, published.describe()
            expected[f"2.0.{n}"] = sha256(y)
            assert run_cli(home, "version", "delete", f"g/d@1.0.{n}", "--purge").status == 0
            argv = ["--json", "gc", "--keep-captures", "0"] if n % 2 == 0 else ["--json", "optimize"]
            collector_runs.append(run_cli(home, *argv, "--wait", "120"))
        done.set()

    def exporter(side: int) -> None:
        while not done.is_set():
            for version in list(expected):
                out = work / f"export-{side}.raw"
                run = run_cli(home, "version", "export", f"g/d@{version}", str(out), "--format", "raw")
                reads.append((version, run, sha256(out) if run.status == 0 else None))
                out.unlink(missing_ok=True)

    def base_builder() -> None:
        serial = 0
        while not done.is_set():
            for version in list(expected):
                serial += 1
                run = run_cli(home, "vm", "new", f"b{serial}", "--image", f"g/d@{version}", "--ssh-key", str(key))
                base = None
                if run.status == 0:
                    record = json.loads((home / "vms" / f"b{serial}" / "vm.json").read_text())
                    base = sha256(home / "bases" / f"{record['base_disks'][0].split(':')[1]}.raw")
                reads.append((version, run, base))
                assert run_cli(home, "vm", "delete", f"b{serial}").status == 0  # gc evicts the base
    threads = [threading.Thread(target=collector), threading.Thread(target=exporter, args=(0,)),
               threading.Thread(target=exporter, args=(1,)), threading.Thread(target=base_builder)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(t.is_alive() for t in threads), "a process hung"
    assert len(collector_runs) == RACES * 2
    for run in collector_runs:
        assert run.status == 0, run.describe()
    figures: Counter[str] = Counter()
    for run in collector_runs:
        body = json.loads(run.stdout)
        figures["packs repacked by gc"] += body.get("counts", {}).get("repack", 0)
        figures["packs rewritten by optimize"] += (body.get("plan") or {}).get("packs", 0)
    for version, run, content in reads:
        assert run.status == 0, run.describe()
        assert content == expected[version], f"{run.argv}: the bytes differ from {version}'s source"
        figures["exports" if run.argv[0] == "version" else "base builds"] += 1
    assert verify_problems(home) == []
    record_figures("concurrency: exports and base builds against gc and optimize", dict(figures))
    assert figures["packs repacked by gc"] >= 1 and figures["packs rewritten by optimize"] >= 1
    assert figures["exports"] >= 4 and figures["base builds"] >= 2


def test_same_version_published_twice_at_once(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_home(home)
    rng = random.Random(11)
    figures: Counter[str] = Counter()
    for race in range(RACES):
        version = f"2.0.{race}"
        paths = [write_raw(work / f"{version}-{side}.raw", 32 << 20, random_pieces(rng, 32 << 20, 40))
                 for side in "ab"]
        procs = [imgtool(home, "publish", "g/d", "--version", version, "--os-disk", str(p), "--allow-unaudited")
                 for p in paths]
        runs = [finish(proc, ["publish", version]) for proc in procs]
        assert sorted(r.status for r in runs) == [0, 4], [r.describe() for r in runs]
        winner, loser = (runs[0], runs[1]) if runs[0].status == 0 else (runs[1], runs[0])
        assert loser.one_line_error() and "already exists" in loser.stderr, loser.describe()
        figures["lost at the name (both captured)" if "won the race" in loser.stderr
                else "lost at the early check"] += 1
        source = paths[runs.index(winner)]
        assert content_of(home, version, work) == sha256(source), "the version is not the winner's disk"
    assert verify_problems(home) == []
    record_figures("concurrency: same version twice", dict(figures))


def test_two_vm_new_with_one_name(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    make_home(home, "v")
    source = write_raw(work / "os.raw", DISK, random_pieces(random.Random(3), DISK, 6))
    published = run_cli(home, "publish", "g/v", "--version", "1.0.0", "--os-disk", str(source), "--allow-unaudited")
    assert published.status == 0, published.describe()
    key = work / "id.pub"
    key.write_text(fake_ssh_key() + "\n")
    for race in range(RACES):
        name = f"twin{race}"
        args = ["vm", "new", name, "--image", "g/v@1.0.0", "--ssh-key", str(key)]
        runs = [finish(p, args) for p in [imgtool(home, *args), imgtool(home, *args)]]
        assert sorted(r.status for r in runs) == [0, 4], [r.describe() for r in runs]
        loser = next(r for r in runs if r.status == 4)
        assert loser.one_line_error() and "already exists" in loser.stderr, loser.describe()
        assert vm_problems(home) == []
        assert (home / "vms" / name / "vm.json").exists()
    assert verify_problems(home) == []


def stopped_inside_lock(zygote: Zygote, home: Path, args: list[str], marker: str) -> tuple[int, dict[str, Path]]:
    """Start imgtool and freeze it (SIGSTOP) right after it opened the file named by `marker`."""
    probe = zygote.run(args, home=home)  # a first run says at which mutation that happens
    assert probe.status == 0, probe.describe()
    taken = next(i for i, e in enumerate(probe.events, 1) if e.startswith("open ") and marker in e)
    return zygote.spawn(args, home=home, stop_at=taken + 1)


def wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "T":
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} never reached its stop point")


def test_locks_time_out_and_name_their_holders(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    for args in (["gallery", "create", "g"], ["gallery", "create", "h"]):
        assert zygote.run(args, home=home).status == 0
    store = Home.at(home).store

    # A writer holds the store lock (shared): gc waits --wait seconds, then names it.
    args = ["gallery", "update", "g", "--description", "frozen while it holds the store lock"]
    pid, files = stopped_inside_lock(zygote, home, args, "/gallery-g.lock")
    wait_stopped(pid)
    blocked = zygote.run(["gc", "--wait", "0.5"], home=home)
    assert blocked.status == Locked.exit_code and blocked.one_line_error(), blocked.describe()
    assert f"pid {pid} (imgtool gallery update, shared)" in blocked.stderr, blocked.stderr
    # ... and the gallery's own lock names it too.
    with pytest.raises(Locked, match=rf"pid {pid} \(imgtool gallery update\)"), \
            file_lock(store.layout.locks / "gallery-g.lock", timeout=0.3):
        pass
    os.kill(pid, signal.SIGCONT)
    assert zygote.wait(pid, files, args).status == 0

    # gc holds it exclusively: a writer times out naming gc; once gc is done, writers go on.
    pid, files = stopped_inside_lock(zygote, home, ["gc"], "/holder-")
    wait_stopped(pid)
    with pytest.raises(Locked, match=rf"pid {pid} \(imgtool gc, exclusive\)"), store.writing(timeout=0.3):
        pass
    writer = zygote.spawn(["gallery", "update", "h", "--description", "after gc"], home=home)
    os.kill(pid, signal.SIGCONT)
    assert zygote.wait(pid, files, ["gc"]).status == 0
    after = zygote.wait(*writer, ["gallery", "update"])
    assert after.status == 0, after.describe()
