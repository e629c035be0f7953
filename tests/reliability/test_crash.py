"""Crash campaigns: SIGKILL imgtool at many moments of capture, publish, version delete, gc,
optimize, vm new and vm delete, and prove that nothing is lost and nothing needs repair.

Kill points are of two kinds (see zygote.py): right before the k-th filesystem mutation
or tool start of the command (k drawn over the whole command, so every step of the write
order gets hit: pack, index, manifest, lease, name, log, repack, deletes, overlays, seed,
base), and at a random wall-clock moment (mid-write, mid-qemu-nbd, mid-hash).

After every kill:
- `verify --deep` finds nothing wrong (garbage such as a pack without an index is not damage);
- every version published before is intact: same record, and its content was compared with
  its source when it landed;
- the killed command had all or nothing of its effect (a version is complete or absent);
- no qemu-nbd or other helper is left running;
- the very same command, run again, works without any repair;
and at the end gc leaves no temporary file and no stale lock holder anywhere.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imgtool.home import Home
from imgtool.tools import qemu_img
from store.materialize import materialize
from tests.conftest import require_tools
from tests.reliability.harness import (
    CAMPAIGN,
    Run,
    Zygote,
    fake_ssh_key,
    leftovers,
    random_pieces,
    record_figures,
    sha256,
    stray_processes,
    verify_problems,
    vm_problems,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

STORE_ROUNDS = 80 if CAMPAIGN else 20  # x5 commands: 100 kill points by default, 400 in a campaign
VM_ROUNDS = 40 if CAMPAIGN else 10  # x2 commands: 20 kill points by default, 80 in a campaign
DISK = 4 << 20
KINDS = ("capture", "publish", "delete", "gc", "optimize")


@dataclass
class Landed:
    record: str  # the version record's digest when it landed
    content: str  # sha256 of the OS disk's guest bytes (equal to its source's)


@dataclass
class Campaign:
    """A long-lived home that commands are run against, killed, checked and run again."""

    zygote: Zygote
    home: Path
    work: Path
    rng: random.Random
    versions: dict[str, Landed] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # kind -> mutations of its last full run
    durations: dict[str, float] = field(default_factory=dict)  # kind -> seconds of its last full run
    figures: Counter[str] = field(default_factory=Counter)
    serial: int = 0
    definition: str = "d"

    def imgtool(self, argv: list[str], kind: str, **hooks: Any) -> Run:
        started = time.monotonic()
        run = self.zygote.run(argv, home=self.home, **hooks)
        if not run.killed and not hooks:
            self.events[kind] = max(1, len(run.events))
            self.durations[kind] = time.monotonic() - started
        return run

    def plan(self, kind: str, point: int) -> dict[str, Any]:
        """Where to kill this run: mostly before a mutation, every fourth at a random moment."""
        self.figures["kill points tried"] += 1
        if point % 4 == 3:
            self.figures["timed kills tried"] += 1
            return {"kill_after": self.rng.uniform(0.0, self.durations.get(kind, 0.5))}
        return {"kill_at": self.rng.randint(1, self.events.get(kind, 1))}

    def killed(self, run: Run, kind: str) -> None:
        if run.killed:
            self.figures["kills that landed"] += 1
            self.figures[f"kills during {kind}"] += 1
        else:
            self.figures["runs that finished before their kill point"] += 1
            assert run.status in (0, 3, 4), run.describe()  # finished normally (or lost a race to itself)

    def check(self, label: str) -> None:
        problems = verify_problems(self.home)
        assert not problems, f"{label}: verify --deep: {problems}"
        store = Home.at(self.home).store
        for version, landed in self.versions.items():
            assert store.get_name("versions", "g", "d", version) == landed.record, f"{label}: {version} changed"
        # What `version list` says (through its version index cache) is what the names say.
        listed = self.zygote.run(["--json", "version", "list", f"g/{self.definition}"], home=self.home)
        assert listed.status == 0, f"{label}: {listed.describe()}"
        named = {key[0]: ref for key, ref in store.list_names("versions", "g", self.definition)}
        assert {v["version"]: v["record"] for v in json.loads(listed.stdout)} == named, label
        deadline = time.monotonic() + 5
        while (strays := stray_processes(str(self.work))) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not strays, f"{label}: processes left behind: {strays}"
        self.figures["checks passed"] += 1

    def adopt(self, version: str, content: str) -> None:
        """A version that is named now: it must be complete and equal to its source."""
        store = Home.at(self.home).store
        record = store.get_name("versions", "g", "d", version)
        if record is None or version in self.versions:
            return
        disk_ref = store.get_manifest(record)["disks"][0]["digest"]
        out = self.work / "landed.raw"
        materialize(store, store.get_disk(disk_ref), out)
        assert sha256(out) == content, f"version {version} does not hold its source's bytes"
        out.unlink()
        self.versions[version] = Landed(record, content)


class StoreCampaign(Campaign):
    def __init__(self, zygote: Zygote, home: Path, work: Path, rng: random.Random) -> None:
        super().__init__(zygote, home, work, rng)
        self.pieces = random_pieces(rng, DISK, 6)
        self.captured: tuple[str, str] | None = None  # (digest, content sha) of the last capture

    def new_source(self) -> tuple[Path, str]:
        """A disk like the previous one with a chunk or two rewritten (so gc has packs to repack)."""
        self.serial += 1
        for offset in self.rng.sample(sorted(self.pieces), 2):
            del self.pieces[offset]
        self.pieces.update(random_pieces(self.rng, DISK, 3))
        raw = write_raw(self.work / f"src-{self.serial}.raw", DISK, self.pieces)
        content = sha256(raw)
        if self.serial % 3:
            return raw, content
        image = raw.with_suffix(".qcow2")  # compressed clusters are read through qemu-nbd
        subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
        raw.unlink()
        return image, content

    def step(self, kind: str, point: int, *, kill: bool) -> None:
        hooks = self.plan(kind, point) if kill else {}
        if kind == "capture":
            source, content = self.new_source()
            argv = ["capture", str(source)]
            run = self.imgtool(argv, kind, **hooks)
            if kill:
                self.killed(run, kind)
                self.check(f"capture killed ({hooks})")
                run = self.imgtool(argv, kind)
            assert run.status == 0, run.describe()
            self.captured = (run.stdout.strip(), content)
        elif kind == "publish":
            version = f"1.0.{point}"
            if self.captured and point % 3 == 0:
                (disk, content), self.captured = self.captured, None  # publish a capture by digest
            else:
                source, content = self.new_source()
                disk = str(source)
            argv = ["publish", "g/d", "--version", version, "--os-disk", disk, "--allow-unaudited"]
            run = self.imgtool(argv, kind, **hooks)
            if kill:
                self.killed(run, kind)
                self.check(f"publish killed ({hooks})")
                self.adopt(version, content)  # landed whole, or not at all (checked by verify)
                landed = version in self.versions
                run = self.imgtool(argv, kind)
                assert run.status == (4 if landed else 0), run.describe()
            else:
                assert run.status == 0, run.describe()
            self.adopt(version, content)
            assert version in self.versions
        elif kind == "delete":
            version = min(self.versions, key=lambda v: tuple(int(p) for p in v.split(".")))
            argv = ["version", "delete", f"g/d@{version}"]
            run = self.imgtool(argv, kind, **hooks)
            if kill:
                self.killed(run, kind)
                gone = Home.at(self.home).store.get_name("versions", "g", "d", version) is None
                if gone:
                    del self.versions[version]
                self.check(f"version delete killed ({hooks})")
                run = self.imgtool(argv, kind)
                assert run.status == (3 if gone else 0), run.describe()
            else:
                assert run.status == 0, run.describe()
            self.versions.pop(version, None)
        else:
            if kind == "gc":
                argv = ["gc", "--keep-captures", "0"] if point % 2 else ["gc"]
            else:  # rewrites the packs captured since the last one (a gc first, every other time)
                argv = ["optimize", "--gc"] if point % 2 else ["optimize"]
            run = self.imgtool(argv, kind, **hooks)
            if kill:
                self.killed(run, kind)
                self.check(f"{kind} killed ({hooks})")
                run = self.imgtool(argv, kind)
            assert run.status == 0, run.describe()
        self.check(f"{kind} run again after a kill" if kill else f"{kind}")


def setup_home(zygote: Zygote, home: Path, state: str, definition: str) -> None:
    """A gallery and a definition. The disks published into it are random pieces, no guest OS the audit
    can read: publishes give --allow-unaudited."""
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", f"g/{definition}", "--publisher", "p", "--offer", definition,
                  "--sku", "s", "--os-type", "linux", "--os-state", state]):
        run = zygote.run(argv, home=home)
        assert run.status == 0, run.describe()


def test_kill_capture_publish_delete_gc_optimize(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    setup_home(zygote, home, "generalized", "d")
    campaign = StoreCampaign(zygote, home, work, random.Random(20261126))
    for point, kind in enumerate(("capture", "publish", "publish", "publish", "delete", "gc", "optimize")):
        campaign.step(kind, point, kill=False)  # warm-up: learn how long each command is
    point = 10
    for _round in range(STORE_ROUNDS):
        for kind in KINDS:
            point += 1
            campaign.step(kind, point, kill=True)
    final = campaign.imgtool(["gc", "--keep-captures", "0"], "gc")
    assert final.status == 0, final.describe()
    campaign.check("final gc")
    assert leftovers(home) == []
    assert list((home / "store" / "locks").glob("holder-*")) == [], "stale lock holder files after gc"
    listed = zygote.run(["--json", "version", "list", "g/d"], home=home)
    assert listed.status == 0, listed.describe()
    assert '"version"' in listed.stdout or not campaign.versions
    record_figures("crash: capture, publish, version delete, gc, optimize", dict(campaign.figures))
    assert campaign.figures["kill points tried"] >= 50
    assert campaign.figures["kills that landed"] >= 40  # most kill points really interrupt something


class VmCampaign(Campaign):
    def __init__(self, zygote: Zygote, home: Path, work: Path, rng: random.Random) -> None:
        super().__init__(zygote, home, work, rng)
        self.key = work / "id.pub"
        self.key.write_text(fake_ssh_key() + "\n")
        self.user_data = work / "user-data"
        self.user_data.write_text("#cloud-config\nruncmd:\n  - [echo, campaign]\n")

    def vm_check(self, label: str) -> None:
        problems = vm_problems(self.home)
        assert not problems, f"{label}: {problems}"
        h = Home.at(self.home)
        for folder in h.vms.iterdir():
            record = folder / "vm.json"
            if folder.is_dir() and record.exists():
                for disk in json.loads(record.read_text())["disks"]:
                    info = qemu_img.info(folder / disk["overlay"], fmt="qcow2")
                    assert info.backing_file == disk["base"] and info.backing_format == "raw", label
        self.check(label)

    def new(self, name: str, point: int) -> None:
        argv = ["vm", "new", name, "--image", "g/v@1.0.0", "--ssh-key", str(self.key),
                "--user-data", str(self.user_data)]
        run = self.imgtool(argv, "vm new", **self.plan("vm new", point))
        self.killed(run, "vm new")
        self.vm_check(f"vm new killed at point {point}")
        exists = (self.home / "vms" / name / "vm.json").exists()
        again = self.imgtool(argv, "vm new")
        assert again.status == (4 if exists else 0), again.describe()
        self.vm_check("vm new run again")

    def delete(self, name: str, point: int) -> None:
        argv = ["vm", "delete", name]
        run = self.imgtool(argv, "vm delete", **self.plan("vm delete", point))
        self.killed(run, "vm delete")
        self.vm_check(f"vm delete killed at point {point}")
        gone = not (self.home / "vms" / name).exists()
        again = self.imgtool(argv, "vm delete")
        assert again.status == (3 if gone else 0), again.describe()
        self.vm_check("vm delete run again")


def test_kill_vm_new_and_delete(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-nbd")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    setup_home(zygote, home, "generalized", "v")
    rng = random.Random(4)
    source = write_raw(work / "os.raw", DISK, random_pieces(rng, DISK, 8))
    published = zygote.run(["publish", "g/v", "--version", "1.0.0", "--os-disk", str(source), "--allow-unaudited"],
                           home=home)
    assert published.status == 0, published.describe()
    campaign = VmCampaign(zygote, home, work, rng)
    campaign.definition = "v"
    for argv, kind in ((["vm", "new", "warm", "--image", "g/v@1.0.0", "--ssh-key", str(campaign.key),
                         "--user-data", str(campaign.user_data)], "vm new"),
                       (["vm", "delete", "warm"], "vm delete"), (["gc"], "gc")):
        run = campaign.imgtool(argv, kind)
        assert run.status == 0, run.describe()
    # The warm-up measured a vm new that materializes its base: every round starts that way again.
    for point in range(VM_ROUNDS * 2):
        name = f"vm{point // 2}"
        if point % 2 == 0:
            campaign.new(name, point)
        else:
            campaign.delete(name, point)
            gc = campaign.imgtool(["gc"], "gc")  # evicts the unused base: the next vm new rebuilds it
            assert gc.status == 0, gc.describe()
            assert leftovers(home) == [], "gc left temporary files behind"
            assert not [p for p in (home / "vms").iterdir() if p.is_dir()], "gc left VM folders behind"
    campaign.vm_check("end")
    record_figures("crash: vm new, vm delete", dict(campaign.figures))
    assert campaign.figures["kills that landed"] >= VM_ROUNDS
