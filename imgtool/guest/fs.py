"""A guest's root file system, reached without mounting it.

The disk's guest-visible bytes come from the file itself (raw) or from qemu-storage-daemon's FUSE
export of it (qcow2 and every other format QEMU reads, backing chain included): a regular file that
looks like the raw disk. The partition table is read from those bytes, and e2fsprogs' debugfs opens
the ext2/3/4 partition at its offset (`FILE?offset=N`, an option of e2fsprogs' unix I/O manager):
read-only for the audit, `-w` for offline generalization. Nothing is mounted and no root is needed
beyond what FUSE needs (fusermount3 for other users).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import Corrupt, Refused, ToolFailed
from imgtool.guest import partitions
from imgtool.tools import run

EXPORT_TIMEOUT = 30.0
DEBUGFS_TIMEOUT = 120.0
MAX_READ = 1 << 20  # files the audit reads (os-release, machine-id, passwd) are small
# A name debugfs would parse as more than one word or request; such files are reported, not touched.
SAFE_NAME = re.compile(r"[^\x00-\x1f\x7f\"\\]+")


@contextlib.contextmanager
def disk_bytes(path: Path, fmt: str, *, writable: bool = False) -> Iterator[Path]:
    """A path whose bytes are the disk's guest-visible content, for the duration of the block.

    raw: the file itself. Else a FUSE export by qemu-storage-daemon, stopped (and unmounted) on exit.
    The daemon is our tethered child, not a daemonized one: if this process is killed, the kernel
    sends it SIGTERM and it unmounts, so a killed publish or audit leaves no daemon behind.
    """
    if fmt == "raw":
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="imgtool-export-") as tmp:
        mountpoint = Path(tmp) / "disk"
        mountpoint.touch(mode=0o600)
        pidfile = Path(tmp) / "qsd.pid"
        # The disk may be hostile (a file given to audit): the daemon runs under the untrusted limits.
        daemon = run.spawn(export_argv(path, fmt, mountpoint, pidfile, writable=writable),
                           limits=run.UNTRUSTED, tethered=True, death_signal=signal.SIGTERM)
        try:
            _await_export(daemon, pidfile)
            yield mountpoint
        finally:
            daemon.stop(timeout=10)


def _await_export(daemon: run.Background, pidfile: Path) -> None:
    """Wait until the export is mounted: qemu-storage-daemon writes its pid file after creating
    its exports (a documented order), so our child's pid in the file means the mount is there."""
    deadline = time.monotonic() + EXPORT_TIMEOUT
    while time.monotonic() < deadline:
        if not daemon.alive():
            daemon.stop()
            code = daemon.returncode()
            raise run.failure(run.Result(daemon.argv, -1 if code is None else code, "", daemon.stderr()))
        with contextlib.suppress(OSError, ValueError):
            if int(pidfile.read_text().strip()) == daemon.pid:
                return
        time.sleep(0.02)
    raise ToolFailed(f"qemu-storage-daemon did not export the disk within {EXPORT_TIMEOUT:.0f} s",
                     hint="the disk file may be on a hung file system; run with --debug for the command")


def export_argv(path: Path, fmt: str, mountpoint: Path, pidfile: Path, *, writable: bool) -> list[str]:
    """qemu-storage-daemon exporting `path` (format `fmt`) as a raw FUSE file; the pid file marks it ready."""
    read_only = "off" if writable else "on"
    return [
        "qemu-storage-daemon",
        "--blockdev", f"driver=file,node-name=file0,filename={_qemu_escape(path)},read-only={read_only}",
        "--blockdev", f"driver={fmt},node-name=disk0,file=file0,read-only={read_only}",
        "--export", f"type=fuse,id=export0,node-name=disk0,mountpoint={_qemu_escape(mountpoint)},"
                    f"writable={'on' if writable else 'off'}",
        "--pidfile", os.fspath(pidfile),
    ]


def _qemu_escape(path: Path) -> str:
    # QEMU's option syntax doubles a comma to include it in a value.
    return os.fspath(path.absolute()).replace(",", ",,")




@dataclass(frozen=True)
class RootFs:
    """The partition (or whole disk) holding the guest's root file system."""

    disk: Path
    partition: partitions.Partition | None  # None: a file system on the whole disk
    table: partitions.Table

    @property
    def offset(self) -> int:
        return 0 if self.partition is None else self.partition.start

    @property
    def device(self) -> str:
        return os.fspath(self.disk) + (f"?offset={self.offset}" if self.offset else "")


class NotAudited(Exception):
    """The root file system cannot be read with the tools at hand; `reason` says why. `opaque`: the disk
    shows no partition table and no file system at all (blank or raw data), so no guest OS was seen
    whose identity went unchecked; otherwise one was (xfs, btrfs, LVM, a partitioned disk...)."""

    def __init__(self, reason: str, *, opaque: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.opaque = opaque


def read_table(disk: Path) -> partitions.Table:
    size = disk.stat().st_size
    with open(disk, "rb") as handle:
        head = handle.read(34 * partitions.SECTOR)
        span = partitions.gpt_entry_span(head)
        entries = None
        if span is not None and span[0] + span[1] > len(head):
            if span[0] + span[1] > size:
                raise Corrupt("the GPT entry array lies past the disk's end", hint="the partition table is damaged")
            handle.seek(span[0])
            entries = handle.read(span[1])
        elif span is not None:
            entries = head[span[0]:span[0] + span[1]]
    return partitions.read_table(head, entries, size)


def find_root(disk: Path) -> RootFs:
    """The ext2/3/4 file system that holds /etc; NotAudited when there is none."""
    table = read_table(disk)
    # A boot sector without partitions (a FAT file system's looks like an MBR) is a whole-disk file system.
    candidates: list[partitions.Partition | None] = list(table.partitions) or [None]
    seen: list[str] = []
    for part in candidates:
        with open(disk, "rb") as handle:
            handle.seek(0 if part is None else part.start)
            head = handle.read(BTRFS_MAGIC_AT + 8)
        if not partitions.is_ext(head):
            seen.append(_describe(part, head))
            continue
        root = RootFs(disk, part, table)
        if Debugfs(root).kind("/etc") == "dir":
            return root
        seen.append(f"{_where(part)}: ext file system without /etc")
    raise NotAudited("no ext2/3/4 root file system found (" + ("; ".join(seen) or "no partitions") + "); "
                     "only ext file systems can be read without libguestfs",
                     opaque=table.scheme == "none" and seen == [f"{_where(None)}: {UNKNOWN}"])


def _where(part: partitions.Partition | None) -> str:
    return "whole disk" if part is None else f"partition {part.number}"


UNKNOWN = "no file system recognised"
BTRFS_MAGIC_AT = 0x10040  # btrfs keeps its superblock at 64 KiB


def _describe(part: partitions.Partition | None, head: bytes) -> str:
    kinds = {b"XFSB": "xfs", b"FAT3": "vfat", b"FAT1": "vfat", b"NTFS": "ntfs", b"LUKS\xba\xbe": "LUKS",
             b"LABELONE": "LVM", b"SWAPSPACE2": "swap"}
    found = next((name for magic, name in kinds.items() if magic in head[:4096]), UNKNOWN)
    if head[BTRFS_MAGIC_AT:BTRFS_MAGIC_AT + 8] == b"_BHRfS_M":
        found = "btrfs"
    return f"{_where(part)}: {found}"


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    uid: int
    gid: int
    size: int

    @property
    def kind(self) -> str:
        fmt = self.mode & 0o170000
        return {0o040000: "dir", 0o100000: "file", 0o120000: "symlink"}.get(fmt, "other")


class Debugfs:
    """debugfs requests against one file system. Read-only (`-c`) unless `writable`."""

    def __init__(self, root: RootFs, *, writable: bool = False) -> None:
        self.root = root
        self.writable = writable

    def request(self, text: str) -> tuple[str, str]:
        """One debugfs request; (stdout, stderr). debugfs exits 0 even when a request fails."""
        flags = ["-w"] if self.writable else ["-c"]
        result = run.run(["debugfs", *flags, "-R", text, self.root.device], timeout=DEBUGFS_TIMEOUT,
                         limits=run.UNTRUSTED)
        # The banner ("debugfs 1.47.0 ...") and catastrophic-mode notice go to stderr; drop them.
        errors = "\n".join(line for line in result.stderr.splitlines()
                           if not line.startswith(("debugfs ", "catastrophic mode")))
        return result.stdout, errors.strip()

    def batch(self, requests: list[str]) -> str:
        """Several requests in one debugfs process (writes): its stderr, where failures are reported."""
        flags = ["-w"] if self.writable else ["-c"]
        body = "".join(f"{r}\n" for r in requests).encode()
        result = run.run(["debugfs", *flags, "-f", "-", self.root.device], timeout=DEBUGFS_TIMEOUT, input=body,
                         limits=run.UNTRUSTED)
        return result.stderr

    def listdir(self, path: str) -> list[Entry] | None:
        """Entries of a directory (without . and ..), or None when it does not exist."""
        out, err = self.request(f'ls -p "{path}"')
        if err and not out:
            return None
        entries = []
        for line in out.splitlines():
            parts = line.split("/")
            # /inode/mode/uid/gid/name/size/ ; a name cannot hold "/"
            if len(parts) != 8 or parts[5] in (".", ".."):
                continue
            with contextlib.suppress(ValueError):
                entries.append(Entry(parts[5], int(parts[2], 8), int(parts[3]), int(parts[4]),
                                     int(parts[6] or 0)))
        return entries

    def entry(self, path: str) -> Entry | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        found = self.listdir(parent or "/")
        return next((e for e in found or [] if e.name == name), None)

    def kind(self, path: str) -> str | None:
        if path == "/":
            return "dir"
        found = self.entry(path)
        return None if found is None else found.kind

    def link_target(self, path: str) -> str | None:
        out, _ = self.request(f'stat "{path}"')
        match = re.search(r'Fast link dest: "(.*)"', out)
        return match.group(1) if match else None

    def read(self, path: str, *, follow: int = 8) -> bytes | None:
        """A small regular file's bytes (symlinks followed inside the guest), or None if absent."""
        for _ in range(follow):
            found = self.entry(path)
            if found is None:
                return None
            if found.kind == "symlink":
                target = self.link_target(path)
                if target is None:
                    return None
                path = target if target.startswith("/") else os.path.normpath(f"{os.path.dirname(path)}/{target}")
                continue
            if found.kind != "file" or found.size > MAX_READ:
                return None
            with tempfile.TemporaryDirectory(prefix="imgtool-dump-") as tmp:
                out = Path(tmp) / "f"
                self.request(f'dump "{path}" "{out}"')
                return out.read_bytes() if out.exists() else None
        return None

    def stats(self) -> dict[str, str]:
        out, err = self.request("stats -h")
        if not out:
            raise ToolFailed(f"debugfs cannot read the file system: {err}", hint="the disk may be damaged")
        found = {}
        for line in out.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                found[key.strip()] = value.strip()
        return found


def check_clean(dbg: Debugfs) -> None:
    """Refuse to write a file system whose journal still needs replaying (a replay would undo our edits)."""
    features = dbg.stats().get("Filesystem features", "")
    if "needs_recovery" in features.split():
        raise Refused("the guest file system was not shut down cleanly (its journal needs recovery)",
                      hint="start the VM and shut it down cleanly (imgtool vm stop), then generalize it")


def safe(name: str) -> bool:
    return bool(SAFE_NAME.fullmatch(name))
