"""Shared machinery of the reliability campaigns: the fork server client, test disks, and the
checks every campaign repeats (verify, leftovers, stray processes, fingerprints, canaries)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from imgtool import maintenance
from imgtool.home import Home
from imgtool.vm import bases
from imgtool.vm import lifecycle as vm
from store.packs import Location, decode_chunk, decode_index, iter_index_files, read_frame

ROOT = Path(__file__).resolve().parents[2]
ZYGOTE = Path(__file__).resolve().with_name("zygote.py")
CAMPAIGN = os.environ.get("IMGTOOL_CAMPAIGN") == "1"
REPORT_ENV = "IMGTOOL_CAMPAIGN_REPORT"
CHUNK = 256 << 10
SIGKILL_STATUS = -9


@dataclass
class Run:
    """One finished imgtool run: exit status (negative: killed by that signal) and its output."""

    argv: list[str]
    status: int
    stdout: str
    stderr: str
    events: list[str] = field(default_factory=list)

    @property
    def killed(self) -> bool:
        return self.status == SIGKILL_STATUS

    def one_line_error(self) -> bool:
        """stderr is exactly `imgtool: error: ...` plus an optional `  hint: ...`, no traceback."""
        lines = self.stderr.splitlines()
        return (1 <= len(lines) <= 2 and lines[0].startswith("imgtool: error: ")
                and all(line.startswith("  hint: ") for line in lines[1:]))

    def describe(self) -> str:
        return f"imgtool {' '.join(self.argv)} -> {self.status}\nstdout: {self.stdout}\nstderr: {self.stderr}"


class Zygote:
    """Client of tests/reliability/zygote.py: runs imgtool in forked children."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen([sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.serial = 0

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote died")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def spawn(self, argv: list[str], *, home: Path, env: dict[str, str] | None = None,
              **hooks: Any) -> tuple[int, dict[str, Path]]:
        """Start imgtool with `argv` against `home`; returns the pid and its output files."""
        self.serial += 1
        files = {k: self.workdir / f"run-{self.serial}.{k}" for k in ("stdout", "stderr", "events")}
        request = {"op": "spawn", "argv": argv, "cwd": str(self.workdir),
                   "env": {"IMGTOOL_HOME": str(home), "IMGTOOL_ACCEL": "tcg", **(env or {})},
                   "watch": [str(home)], **{k: str(v) for k, v in files.items()}, **hooks}
        return int(self._ask(request)["pid"]), files

    def wait(self, pid: int, files: dict[str, Path], argv: list[str], *,
             kill_after: float | None = None) -> Run:
        status = int(self._ask({"op": "wait", "pid": pid, "kill_after": kill_after})["status"])
        outputs = {k: (p.read_text(errors="replace") if p.exists() else "") for k, p in files.items()}
        events = [label for _event, label in json.loads(outputs["events"])] if outputs["events"] else []
        for path in files.values():
            path.unlink(missing_ok=True)
        return Run(argv, status, outputs["stdout"], outputs["stderr"], events)

    def run(self, argv: list[str], *, home: Path, env: dict[str, str] | None = None,
            kill_after: float | None = None, **hooks: Any) -> Run:
        pid, files = self.spawn(argv, home=home, env=env, **hooks)
        return self.wait(pid, files, argv, kill_after=kill_after)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# -- test disks ---------------------------------------------------------------------------------


def write_raw(path: Path, size: int, pieces: dict[int, bytes]) -> Path:
    """A sparse raw disk of `size` bytes with `pieces` (offset -> bytes) written in it."""
    assert all(offset + len(data) <= size for offset, data in pieces.items()), "a piece overruns the disk"
    with open(path, "wb") as handle:
        handle.truncate(size)
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)
    return path


def random_pieces(rng: random.Random, size: int, count: int) -> dict[int, bytes]:
    """`count` chunk-aligned pieces of incompressible data (each under one chunk)."""
    slots = rng.sample(range(size // CHUNK), count)
    return {slot * CHUNK: rng.randbytes(rng.randrange(4096, CHUNK)) for slot in slots}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- checks ---------------------------------------------------------------------------------------


def fingerprint(root: Path) -> dict[str, str]:
    """Every file (hash of its bytes) and folder under root, except lock files."""
    found: dict[str, str] = {}
    if not root.exists():
        return found
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if "locks" in path.relative_to(root).parts:
            continue
        if path.is_dir() and not path.is_symlink():
            found[rel + "/"] = "dir"
        elif path.is_file():
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def leftovers(home: Path) -> list[Path]:
    """Temporary files and folders anywhere in a home (they must never count as data)."""
    return sorted(p for p in home.rglob(".tmp-*"))


def verify_problems(home: Path) -> list[str]:
    """`imgtool verify --deep`, in-process: every problem it reports, as text."""
    report, _hit = maintenance.verify(Home.at(home), deep=True)
    return [f"{p.kind} {p.object[:16]}: {p.message}" for p in report.problems]


def stray_processes(marker: str) -> list[str]:
    """Processes whose command line mentions `marker` (e.g. a qemu-nbd left behind by a killed run)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def vm_problems(home: Path) -> list[str]:
    """VM folders that break the rules: a record must name existing overlays over intact bases;
    a folder without a record must be one that gc finds."""
    problems: list[str] = []
    h = Home.at(home)
    unfinished = {p.name for p in vm.unfinished(h)}
    for name in vm.list_names(h):
        folder = h.vms / name
        record_path = folder / "vm.json"
        if not record_path.exists():
            if name not in unfinished:
                problems.append(f"{name}: folder without a record that gc would not remove")
            continue
        record = json.loads(record_path.read_text())
        for disk in record["disks"]:
            if not (folder / disk["overlay"]).is_file():
                problems.append(f"{name}: record names a missing overlay {disk['overlay']}")
            base = Path(disk["base"])
            if not base.is_file():
                problems.append(f"{name}: base {base.name} is missing")
            elif (damage := bases.damage(base, h.store.get_disk(disk["base_disk"]))) is not None:
                problems.append(f"{name}: base {base.name} is damaged: {damage}")
        if record.get("seed") and not (folder / record["seed"]["file"]).is_file():
            problems.append(f"{name}: record names a missing seed")
    for overlay in h.root.rglob("*.qcow2"):
        if overlay.parent.parent != h.vms and "snapshots" not in overlay.parts:
            problems.append(f"overlay outside a VM folder: {overlay}")
    return problems


def stored_bytes_contain(home: Path, needles: list[bytes]) -> list[str]:
    """Where any needle appears in a home: raw file bytes, and every stored chunk decompressed."""
    hits: list[str] = []
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            hits += [f"{path} holds needle {i}" for i, n in enumerate(needles) if n in data]
    layout = Home.at(home).store.layout
    for index_path in iter_index_files(layout):
        pack_hex, entries = decode_index(index_path.read_bytes(), what=index_path.name)
        for entry in entries:
            location = Location.of(pack_hex, entry)
            data = decode_chunk(read_frame(layout, location), location, entry.raw)
            hits += [f"chunk {entry.raw.hex()[:16]} holds needle {i}" for i, n in enumerate(needles) if n in data]
    return hits


def record_figures(name: str, figures: dict[str, Any]) -> None:
    """Print a campaign's figures; also append them to $IMGTOOL_CAMPAIGN_REPORT when set."""
    line = json.dumps({"campaign": name, "full": CAMPAIGN, **figures}, sort_keys=True)
    print(f"\n[campaign] {line}")
    target = os.environ.get(REPORT_ENV)
    if target:
        with open(target, "a") as handle:
            handle.write(line + "\n")


def fake_ssh_key(comment: str = "campaign@test") -> str:
    """A well-formed ed25519 public key line (random key material; nobody holds its private half)."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


@contextlib.contextmanager
def mounted(target: Path, *steps: list[str]) -> Iterator[Path]:
    """Mount something on `target` (each step is one `mount` argv tail), unmounted afterwards.

    Skips (with the kernel's words) only when the kernel refuses the mount, e.g. without
    CAP_SYS_ADMIN; CI runs as root on a VM, where it works.
    """
    done_steps = 0
    try:
        for step in steps:
            done = subprocess.run(["mount", *step], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                pytest.skip(f"the kernel refused `mount {' '.join(step)}`: {done.stderr.strip()}")
            done_steps += 1
        yield target
    finally:
        if done_steps:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def tmpfs(target: Path, size: str) -> contextlib.AbstractContextManager[Path]:
    """A small filesystem (a tmpfs of `size`) on `target`: the disk-full test's disk."""
    target.mkdir(parents=True, exist_ok=True)
    return mounted(target, ["-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(target)])


def read_only(target: Path) -> contextlib.AbstractContextManager[Path]:
    """`target` made read-only in place (a read-only bind mount over itself): root cannot write either."""
    return mounted(target, ["--bind", str(target), str(target)], ["-o", "remount,bind,ro", str(target)])
