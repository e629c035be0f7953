"""Faults: a full disk, a read-only store, and ENOSPC/EROFS injected at every write.

- Disk full for real: the home on a small tmpfs. A capture or publish that does not fit fails
  with one clear line (exit 10), names are unchanged, verify is clean, no temporary file is
  left, gc brings the store back byte for byte to what it was (and works on a 100% full disk),
  and a publish that fits works afterwards.
- Read-only store for real: the home under a read-only bind mount (root cannot write there
  either). Every writer fails with one clear line (exit 11); every reader works.
- Injection campaign: the n-th creating write (open for writing, mkdir, link, rename) of a
  command fails with ENOSPC or EROFS, for n over the whole command. The command either
  completes (the write was optional) or fails cleanly with exit 10/11 and no partial name and
  no temporary file; run again, it works.
"""

from __future__ import annotations

import errno
import random
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from imgtool.home import Home
from tests.conftest import require_tools
from tests.reliability.harness import (
    CAMPAIGN,
    Run,
    Zygote,
    fake_ssh_key,
    fingerprint,
    leftovers,
    random_pieces,
    read_only,
    record_figures,
    tmpfs,
    verify_problems,
    vm_problems,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

DISK = 4 << 20
POINTS_PER_COMMAND = None if CAMPAIGN else 4  # None: every write of every command


def ok(run: Run) -> Run:
    assert run.status == 0, run.describe()
    return run


def files_of(prints: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in prints.items() if v != "dir"}


def names(home: Path) -> set[tuple[str, ...]]:
    """Galleries, definitions and versions. Capture leases are left out: a publish that fails after
    its capture keeps the captured disk leased (24 h, complete, verified) so a retry reuses it."""
    return {key for key, _ in Home.at(home).store.all_names() if key[0] != "captures"}


def base_home(zygote: Zygote, home: Path, work: Path) -> dict[str, Path]:
    """A home with a gallery, a definition, versions 1.0.0 (a VM uses it) and 1.0.2, and the
    garbage of a deleted 1.0.1. The disks are random pieces, no guest OS the audit can read: every
    publish into the generalized definition gives --allow-unaudited."""
    rng = random.Random(5)
    files = {name: write_raw(work / f"{name}.raw", DISK, random_pieces(rng, DISK, 6))
             for name in ("v1", "v2", "v3", "new")}
    files["key"] = work / "id.pub"
    files["key"].write_text(fake_ssh_key() + "\n")
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s",
                  "--os-type", "linux", "--os-state", "generalized"],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", str(files["v1"]), "--allow-unaudited"],
                 ["publish", "g/d", "--version", "1.0.1", "--os-disk", str(files["v2"]), "--allow-unaudited"],
                 ["publish", "g/d", "--version", "1.0.2", "--os-disk", str(files["v3"]), "--allow-unaudited"],
                 ["version", "delete", "g/d@1.0.1"],
                 ["vm", "new", "old", "--image", "g/d@1.0.0", "--ssh-key", str(files["key"])]):
        ok(zygote.run(argv, home=home))
    return files


# -- a real full disk ---------------------------------------------------------------------------


def test_disk_full_during_capture_and_publish(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img", "mount")
    work = tmp_path / "work"
    work.mkdir()
    with tmpfs(tmp_path / "small", "24m") as small:
        home = small / "home"
        files = base_home(zygote, home, work)
        ok(zygote.run(["gc"], home=home))  # what the store is, without the garbage base_home made
        before = fingerprint(home / "store")
        named = names(home)
        big = work / "big.raw"  # 40 MiB of incompressible data for a 24 MiB filesystem
        write_raw(big, 48 << 20, {0: random.Random(1).randbytes(40 << 20)})

        for argv in (["capture", str(big)],
                     ["publish", "g/d", "--version", "2.0.0", "--os-disk", str(big), "--allow-unaudited"]):
            run = zygote.run(argv, home=home)
            assert run.status == 10 and run.one_line_error(), run.describe()
            assert "no space left" in run.stderr
            assert names(home) == named, "a name changed"
            assert leftovers(home) == [], "temporary files left behind"
            assert verify_problems(home) == []
        # The packs written before the disk filled are unreachable; gc takes the store back to
        # exactly what it was -- and gc must work on a disk that is 100% full.
        filler = small / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"], capture_output=True,
                       check=False)
        assert shutil.disk_usage(small).free < 64 << 10
        ok(zygote.run(["gc"], home=home))
        assert files_of(fingerprint(home / "store")) == files_of(before)  # (empty fan-out folders may stay)
        filler.unlink()
        ok(zygote.run(["publish", "g/d", "--version", "2.0.0", "--os-disk", str(files["new"]), "--allow-unaudited"],
                      home=home))
        # A VM whose base does not fit: clean failure, no VM folder, no half-written base.
        filler.write_bytes(bytes(shutil.disk_usage(small).free - (256 << 10)))  # tmpfs allocates zeros too
        run = zygote.run(["vm", "new", "full", "--image", "g/d@2.0.0", "--ssh-key", str(files["key"])], home=home)
        assert run.status == 10 and run.one_line_error(), run.describe()
        assert not (home / "vms" / "full").exists()
        assert vm_problems(home) == [] and leftovers(home) == []


# -- a real read-only store ---------------------------------------------------------------------


WRITERS = [
    ["gallery", "create", "h"],
    ["gallery", "update", "g", "--description", "x"],
    ["definition", "create", "g/e", "--publisher", "p", "--offer", "e", "--sku", "s", "--os-type", "linux",
     "--os-state", "generalized"],
    ["definition", "delete", "g/d"],
    ["publish", "g/d", "--version", "3.0.0", "--os-disk", "{new}", "--allow-unaudited"],
    ["capture", "{new}"],
    ["version", "update", "g/d@1.0.0", "--exclude-from-latest"],
    ["version", "delete", "g/d@1.0.0"],
    ["gc"],
    ["vm", "new", "another", "--image", "g/d@1.0.0", "--ssh-key", "{key}"],
    ["vm", "delete", "old"],
    ["vm", "snapshot", "old", "snap"],
    ["vm", "start", "old"],
]
READERS = [
    ["gallery", "list"], ["gallery", "show", "g"], ["definition", "list", "g"], ["definition", "show", "g/d"],
    ["version", "list", "g/d"], ["version", "show", "g/d@1.0.0"], ["version", "resolve", "g/d", "--explain"],
    ["version", "export", "g/d@1.0.0", "{out}", "--format", "raw"], ["du"], ["verify"], ["verify", "--deep"],
    ["vm", "list"], ["vm", "show", "old"], ["vm", "stop", "old"], ["vm", "console", "old"],
    ["--json", "version", "list", "g/d"],
]


def test_read_only_store(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img", "mount")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    files = base_home(zygote, home, work)
    values = {"new": str(files["new"]), "key": str(files["key"]), "out": str(work / "out.raw")}
    before = fingerprint(home)
    with read_only(home):
        for template in WRITERS:
            argv = [a.format(**values) for a in template]
            run = zygote.run(argv, home=home)
            assert run.status == 11 and run.one_line_error(), run.describe()
            assert "Read-only file system" in run.stderr and "read-only" in run.stderr
        for template in READERS:
            argv = [a.format(**values) for a in template]
            ok(zygote.run(argv, home=home))
        assert (work / "out.raw").stat().st_size == DISK
    assert fingerprint(home) == before


# -- injected ENOSPC / EROFS at every write --------------------------------------------------------


COMMANDS = [
    ["publish", "g/d", "--version", "2.0.0", "--os-disk", "{new}", "--allow-unaudited"],
    ["capture", "{new}"],
    ["version", "delete", "g/d@1.0.2"],
    ["version", "update", "g/d@1.0.0", "--exclude-from-latest"],
    ["gc", "--keep-captures", "0"],
    ["vm", "new", "fresh", "--image", "g/d@1.0.0", "--ssh-key", "{key}", "--hostname", "fresh"],
    ["vm", "delete", "old"],
    ["gallery", "create", "h"],
    ["definition", "create", "g/e", "--publisher", "p", "--offer", "e", "--sku", "s", "--os-type", "linux",
     "--os-state", "specialized"],
]


def test_injected_write_failures(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img")
    work = tmp_path / "work"
    work.mkdir()
    pristine = tmp_path / "pristine"
    files = base_home(zygote, pristine, work)
    values = {"new": str(files["new"]), "key": str(files["key"])}
    rng = random.Random(9)
    figures: Counter[str] = Counter()
    home = tmp_path / "home"

    def fresh() -> None:
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(pristine, home, symlinks=True)

    for template in COMMANDS:
        argv = [a.format(**values) for a in template]
        fresh()
        probe = zygote.run(argv, home=home)
        expected_status = probe.status
        assert expected_status == 0, probe.describe()
        expected_names = names(home)
        # Writes that create or replace something (mkdir of folders that exist cannot fail for space).
        points = [i for i, e in enumerate(probe.events, 1) if e.startswith(("open ", "os.link", "os.rename"))]
        if POINTS_PER_COMMAND is not None:
            points = sorted(rng.sample(points, min(POINTS_PER_COMMAND, len(points))))
        for point in points:
            fresh()
            before = names(home)
            fault = (errno.ENOSPC, 10) if point % 2 else (errno.EROFS, 11)
            run = zygote.run(argv, home=home, fail_at=point, fail_errno=fault[0])
            label = f"{' '.join(template)} failing write {point} ({probe.events[point - 1]})"
            figures["writes failed on purpose"] += 1
            if run.status == fault[1]:
                figures["clean failures"] += 1
                assert run.one_line_error(), f"{label}: {run.describe()}"
                assert names(home) == before, f"{label}: failed but changed names"
            else:
                figures["writes that were optional"] += 1
                assert run.status == expected_status, f"{label}: {run.describe()}"
                assert names(home) == expected_names, label
            assert leftovers(home) == [], f"{label}: temporary files left"
            assert verify_problems(home) == [], label
            assert vm_problems(home) == [], label
            again = zygote.run(argv, home=home)
            if run.status == fault[1]:
                assert again.status == expected_status, f"{label}, run again: {again.describe()}"
                assert names(home) == expected_names, label
    record_figures("faults: ENOSPC/EROFS injected at writes", dict(figures))
    assert figures["clean failures"] >= 2 * len(COMMANDS)
