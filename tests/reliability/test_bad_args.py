"""Bad arguments: each gets one `imgtool: error:` line (plus a hint), the right non-zero exit
code, no traceback, and changes nothing in the home (store, VMs, bases), byte for byte.

Names with '/', '..', NUL, control characters, leading '-', overlong or empty, for every kind
of name; versions like 1.2, 1.2.3.4, 01.0.0, 4294967296.0.0, -1.0.0; missing, unreadable and
endless files (folders, FIFOs, devices, symlink loops); generalized/specialized mismatches;
LUN clashes; vCPUs and memory outside the recommended ranges; malformed formats and dates;
paths of every kind where a disk was expected (compressed archives, URLs, folders, devices) and
environments that cannot work (a home that is a file, a FIFO, under a file; a bogus accelerator).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from tests.conftest import require_tools
from tests.reliability.harness import (
    CAMPAIGN,
    Zygote,
    fake_ssh_key,
    fingerprint,
    random_pieces,
    record_figures,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

DEFINE = ["--publisher", "p", "--offer", "{offer}", "--sku", "s", "--os-type", "linux", "--os-state"]
BAD_NAMES = ["", ".", "..", "../x", "a/b", "/abs", "a\x00b", "a\nb", "a\tb", "a\x1b[31mb", "a\x7fb", "-x",
             "a b", "x" * 81, "x" * 4096, "\u00e9", "\uff47", ".hidden", "trailing-", "a..b", "~root", "$(id)",
             "*", "a\\b", "\u202eabc", "web\n", "g\n", "name\r"]
BAD_VERSIONS = ["1.2", "1.2.3.4", "01.0.0", "1.01.0", "4294967296.0.0", "-1.0.0", "1.0.0 ", " 1.0.0", "1.0.x",
                "", "1..0", "1.0.0\n", "\u0661.\u0660.\u0660", "1.0.0-beta", "v1.0.0", "+1.0.0", "1_0.0.0",
                "0x1.0.0", "99999999999999999999.0.0", "1.0.0\r"]


def cases(f: dict[str, str]) -> list[tuple[list[str], int]]:
    """(argv, expected exit code) for every bad argument."""
    new_vm = ["vm", "new", "x", "--image", "g/d@1.0.0", "--ssh-key", f["key"]]
    spec_vm = ["vm", "new", "y", "--image", "g/s@1.0.0"]
    found: list[tuple[list[str], int]] = []
    for n, name in enumerate(BAD_NAMES):
        found += [
            (["gallery", "create", name], 2),
            (["definition", "create", f"g/{name}", *[a.format(offer="o2") for a in DEFINE], "generalized"], 2),
            (["vm", "new", name, "--image", "g/d@1.0.0", "--ssh-key", f["key"]], 2),
            (["vm", "snapshot", "create", "web", name], 2),
        ]
        lookups = [["gallery", "show", name], ["gallery", "delete", name], ["vm", "show", name],
                   ["vm", "delete", name], ["vm", "start", name], ["version", "list", f"g/{name}"],
                   ["capture", f"vm:{name}"], ["capture", f"snapshot:web/{name}"]]
        # Every lookup command meets every third name by default, every name in a campaign.
        found += [(argv, 2) for i, argv in enumerate(lookups) if CAMPAIGN or i % 3 == n % 3]
    for version in BAD_VERSIONS:
        found += [
            (["publish", "g/d", "--version", version, "--os-disk", f["good"]], 2),
            (["version", "show", f"g/d@{version}"], 2),
            (["version", "delete", f"g/d@{version}"], 2),
            (["vm", "new", "x", "--image", f"g/d@{version}", "--ssh-key", f["key"]], 2),
        ]
    publish = ["publish", "g/d", "--version", "2.0.0"]
    found += [
        # missing, unreadable and endless files
        ([*publish, "--os-disk", f["missing"]], 3),
        ([*publish, "--os-disk", f["good"], "--data-disk", f"0={f['missing']}"], 3),
        (["capture", f["missing"]], 3),
        (["capture", f["dangling"]], 3),
        (["capture", f["loop"]], 2),
        (["capture", f["good"] + "/inside"], 2),
        ([*new_vm[:-1], f["missing"]], 2),
        ([*new_vm[:-1], f["folder"]], 2),
        ([*new_vm[:-1], f["fifo"]], 2),
        ([*new_vm[:-1], "/dev/zero"], 2),
        ([*new_vm, "--user-data", f["missing"]], 2),
        ([*new_vm, "--user-data", "/dev/zero"], 2),
        ([*new_vm, "--user-data", f["fifo"]], 2),
        ([*new_vm, "--user-data", f["binary"]], 2),
        # generalized / specialized
        ([*publish, "--os-disk", f["good"], "--os-state", "specialized"], 5),
        (["publish", "g/s", "--version", "2.0.0", "--os-disk", f["good"], "--os-state", "generalized"], 5),
        ([*publish, "--os-disk", f["good"], "--os-state", "frozen"], 2),
        ([*publish, "--os-disk", "vm:web"], 2),
        ([*publish, "--os-disk", "vm:web", "--os-state", "specialized"], 5),
        ([*spec_vm, "--hostname", "h"], 2),
        ([*spec_vm, "--admin-user", "u"], 2),
        ([*spec_vm, "--ssh-key", f["key"]], 2),
        ([*spec_vm, "--user-data", f["user_data"]], 2),
        # LUNs
        ([*publish, "--os-disk", f["good"], "--data-disk", f"1={f['good']}", "--data-disk", f"1={f['good']}"], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", f"64={f['good']}"], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", f"x={f['good']}"], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", f"={f['good']}"], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", "1="], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", f["good"]], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", f"-1={f['good']}"], 2),
        # recommendations (vCPUs 1-4, memory 256-2048 MiB)
        ([*new_vm, "--memory", "64"], 5),
        ([*new_vm, "--memory", "4096"], 5),
        ([*new_vm, "--cpus", "8"], 5),
        ([*new_vm, "--cpus", "0"], 2),  # no VM can have these: refused even before the recommendation
        ([*new_vm, "--cpus", "-1"], 2),
        ([*new_vm, "--cpus", "300", "--ignore-recommendations"], 2),
        ([*new_vm, "--memory", "10", "--ignore-recommendations"], 2),
        ([*new_vm, "--memory", "abc"], 2),
        ([*new_vm, "--memory", "1e9"], 2),
        # warm starts: no warm state made, sizes no VM can have, options that cannot apply
        ([*new_vm, "--warm"], 3),
        ([*new_vm, "--warm", "--disk-size", "1G"], 2),
        (["version", "warm", "g/d@1.0.0", "--cpus", "0"], 2),
        (["version", "warm", "g/d@1.0.0", "--memory", "10"], 2),
        (["version", "warm", "g/d@1.0.0", "--accel", "hax"], 2),
        (["version", "warm", "g/d@9.9.9"], 3),
        # formats and dates
        (["capture", f["good"], "--format", "qcow3"], 2),
        (["capture", f["good"], "--format", "qcow2"], 2),
        ([*publish, "--os-disk", f["good"], "--format", "vmdk"], 2),
        ([*publish, "--os-disk", f["good"], "--end-of-life", "2024-13-01"], 2),
        (["version", "update", "g/d@1.0.0", "--end-of-life", "tomorrow"], 2),
        (["version", "update", "g/d@1.0.0"], 2),
        (["version", "delete", "g/d"], 2),
        (["version", "export", "g/d@1.0.0", f["out"], "--format", "vhdx"], 2),
        (["version", "export", "g/d@1.0.0", f["out"], "--disk", "7"], 3),
        # definitions
        *[(["definition", "create", "g/e", *[a.format(offer="e") for a in DEFINE], "generalized", *extra], 2)
          for extra in (["--firmware", "coreboot"], ["--architecture", "sparc"], ["--min-vcpus", "4", "--max-vcpus",
                                                                                  "2"],
                        ["--min-memory", "-5"], ["--end-of-life", "2024-02-30"], ["--feature", "noequals"],
                        ["--tag", "=v"], ["--disallow-format", "floppy"])],
        (["definition", "create", "g/e", *[a.format(offer="e") for a in DEFINE], "frozen"], 2),
        (["definition", "create", "g/e", "--publisher", "p", "--offer", "e", "--sku", "s", "--os-type", "plan9",
          "--os-state", "generalized"], 2),
        (["definition", "create", "g/e", *[a.format(offer="o") for a in DEFINE], "generalized"], 4),  # same identifier
        (["definition", "update", "g/d", "--os-state", "specialized"], 2),
        (["gallery", "create", "g"], 4),
        (["gc", "--keep-captures", "-1"], 2),
        (["gc", "--keep-captures", "nan"], 2),
        (["gc", "--wait", "-5"], 2),
        *path_cases(f),
    ]
    return found


def path_cases(f: dict[str, str]) -> list[tuple[list[str], int]]:
    """Paths of every kind where a disk or an output was expected, and options checked at entry."""
    publish = ["publish", "g/d", "--version", "2.0.0"]
    new_vm = ["vm", "new", "x", "--image", "g/d@1.0.0", "--ssh-key", f["key"]]
    define = ["definition", "create", "g/e", *[a.format(offer="e") for a in DEFINE], "generalized"]
    found: list[tuple[list[str], int]] = []
    for archive in ("gz", "xz", "zst", "bz2", "tar"):
        found += [(["capture", f[archive]], 2), ([*publish, "--os-disk", f[archive]], 2),
                  ([*publish, "--os-disk", f["good"], "--data-disk", f"0={f[archive]}"], 2)]
    found += [
        (["capture", "https://example.com/disk.qcow2"], 2),
        ([*publish, "--os-disk", "http://127.0.0.1:1/disk.raw"], 2),
        (["capture", f["folder"]], 2),
        (["version", "export", "g/d@1.0.0", f["folder"]], 2),
        (["version", "export", "g/d@1.0.0", f["good"]], 4),  # .raw exists: no silent overwrite
        (["version", "export", "g/d@1.0.0", f["key"], "--format", "qcow2"], 4),
        (["version", "export", "g/d@1.0.0", f["folder"] + "/out.vdi"], 2),  # .vdi: not a format it exports
        (["version", "export", "g/d@1.0.0", f["folder"] + "/missing/out.qcow2"], 3),
        # data disks: never dropped or swapped silently
        ([*publish, "--os-disk", "vm:web:x", "--os-state", "generalized"], 2),
        ([*publish, "--os-disk", f["good"], "--data-disk", "0=vm:web"], 3),  # web has no LUN 0
        ([*publish, "--os-disk", f["good"], "--data-disk", "0=g/d@1.0.0"], 3),
        ([*publish, "--os-disk", f["good"], "--data-disk", "0=g/d@1.0.0:9"], 3),
        # dates and what depends on them
        ([*publish, "--os-disk", f["good"], "--block-deletion-before-end-of-life"], 2),
        ([*publish, "--os-disk", f["good"], "--block-deletion-before-end-of-life", "--end-of-life", "2001-01-01"], 2),
        (["version", "update", "g/d@1.0.0", "--block-deletion"], 2),
        # definitions no VM could follow
        ([*define, "--architecture", "aarch64"], 2),  # bios on aarch64
        ([*define, "--min-memory", "10"], 2),
        ([*define, "--max-vcpus", "1000"], 2),
        # VM options checked where they are given
        ([*new_vm, "--disk-size", "1K"], 2),
        ([*new_vm, "--disk-size", "lots"], 2),
        ([*new_vm, "--forward", "80:80"], 2),
        ([*new_vm, "--forward", "8080:22"], 2),
        ([*new_vm, "--forward", "8080:80", "--forward", "8080:81"], 2),
        ([*new_vm, "--forward", "8080"], 2),
        ([*new_vm, "--accel", "hvf"], 2),
        ([*new_vm, "--accel", "tcg"], 2),  # without --start it would be ignored
        (["vm", "console", "web", "--timeout", "5"], 2),  # likewise without --follow/--until
        (["capture", "vm:web", "--format", "qcow2"], 2),  # --format is for files
        ([*publish, "--os-disk", "g/d@1.0.0", "--format", "raw"], 2),
        ([*new_vm[:-1], f["private"]], 2),  # the usual slip: the private half
        ([*new_vm[:-1], f["user_data"]], 2),  # text, but not a public key
        (["vm", "update", "web"], 2),
        (["vm", "update", "web", "--cpus", "8"], 5),
        (["vm", "update", "web", "--cpus", "0"], 2),
        (["vm", "stop", "web", "--timeout", "-1"], 2),
        (["vm", "ssh", "web", "--wait", "nan"], 2),
        (["vm", "ssh", "web"], 5),  # not running
        (["vm", "console", "web", "--until", "READY"], 5),  # not running, and never said READY
        (["vm", "snapshot", "restore", "web", "nope"], 3),
        (["vm", "snapshot", "delete", "web", "nope"], 3),
        (["vm", "snapshot", "list", "nope"], 3),
    ]
    return found


def env_cases(f: dict[str, str]) -> list[tuple[list[str], int, dict[str, str]]]:
    """Environments that cannot work: each is the user's error, said as such, never exit 70."""
    found: list[tuple[list[str], int, dict[str, str]]] = []
    for home in (f["good"], f["good"] + "/sub", f["fifo"], "/dev/null"):
        found += [(["gallery", "list"], 2, {"IMGTOOL_HOME": home}),
                  (["gallery", "create", "h"], 2, {"IMGTOOL_HOME": home}),
                  (["--home", home, "vm", "list"], 2, {})]
    found += [(["gallery", "list"], 2, {"IMGTOOL_HOME": "", "XDG_DATA_HOME": f["good"]}),
              (["vm", "start", "web"], 2, {"IMGTOOL_ACCEL": "bogus"})]
    return found


def write_archives(work: Path, good: Path, f: dict[str, str]) -> None:
    data = good.read_bytes()
    for ext, pack in (("gz", gzip.compress), ("xz", lzma.compress), ("bz2", bz2.compress),
                      ("zst", zstandard.ZstdCompressor().compress)):
        f[ext] = str(work / f"good.raw.{ext}")
        Path(f[ext]).write_bytes(pack(data))
    f["tar"] = str(work / "good.tar")
    with tarfile.open(f["tar"], "w") as tar:
        tar.add(good, arcname="good.raw")


def test_bad_arguments_get_one_line_and_change_nothing(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    # Random pieces, no guest OS the audit can read: g/d (generalized) takes it with --allow-unaudited. The
    # bad arguments below are refused before the audit, so they are given without it.
    good = write_raw(work / "good.raw", 4 << 20, random_pieces(random.Random(8), 4 << 20, 4))
    f = {"good": str(good), "missing": str(work / "missing.raw"), "key": str(work / "id.pub"),
         "folder": str(work), "fifo": str(work / "fifo"), "binary": str(work / "binary"),
         "user_data": str(work / "user-data"), "out": str(work / "out.img"), "dangling": str(work / "dangling"),
         "loop": str(work / "loop")}
    Path(f["key"]).write_text(fake_ssh_key() + "\n")
    Path(f["user_data"]).write_text("#cloud-config\n")
    Path(f["binary"]).write_bytes(bytes(range(256)) * 4)
    os.mkfifo(f["fifo"])
    os.symlink(work / "nowhere", f["dangling"])
    os.symlink(f["loop"], f["loop"])
    write_archives(work, good, f)
    f["private"] = str(work / "id_ed25519")
    Path(f["private"]).write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", "g/d", *[a.format(offer="o") for a in DEFINE], "generalized",
                  "--min-vcpus", "1", "--max-vcpus", "4", "--min-memory", "256", "--max-memory", "2048"],
                 ["definition", "create", "g/s", *[a.format(offer="s") for a in DEFINE], "specialized"],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", f["good"], "--allow-unaudited"],
                 ["publish", "g/s", "--version", "1.0.0", "--os-disk", f["good"]],
                 ["vm", "new", "web", "--image", "g/d@1.0.0", "--ssh-key", f["key"]]):
        done = zygote.run(argv, home=home)
        assert done.status == 0, done.describe()
    before = fingerprint(home)
    figures: Counter[str] = Counter()
    runs: list[tuple[list[str], int, dict[str, str]]] = [(argv, code, {}) for argv, code in cases(f)]
    runs += env_cases(f)
    for argv, expected, env in runs:
        done = zygote.run(argv, home=home, env=env, kill_after=60)
        assert done.status == expected and done.one_line_error(), done.describe()
        assert "Traceback" not in done.stderr
        after = fingerprint(home)
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k) and not k.startswith("vms/.")}
        assert not changed, f"{argv} changed {changed}"  # (vms/.NAME.lock: the lock file of a name)
        figures[f"exit {expected}"] += 1
        figures["bad arguments refused"] += 1
    record_figures("bad arguments", dict(figures))
