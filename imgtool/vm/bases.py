"""Bases: read-only materialized disks that VM overlays stand on.

The first VM from a version materializes each of its disks once into
`<home>/bases/<disk hex>.raw` (sparse: zero chunks stay holes); every later VM
costs only a qcow2 overlay. Identical disks share one base.

Integrity: a base is verified chunk by chunk as it is written. Its stat
identity (size, mtime, ctime, inode) is recorded beside it; ctime cannot be set
by a user and changes on any write or chmod, so a cheap stat check on every use
catches tampering, and a mismatch triggers a full check against the manifest.
Silent media bit rot is found by `imgtool verify --deep`, which re-hashes bases.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from imgtool.errors import Corrupt, InvalidArgument, NotFound
from imgtool.home import Home
from imgtool.vm import record as vmrecord
from store import atomic, codec
from store import digest as digests
from store.disks import DiskManifest
from store.lock import alive, file_lock
from store.materialize import materialize
from store.progress import Progress
from store.verify import Problem

SUFFIX = ".raw"


def path_for(home: Home, disk_digest: str) -> Path:
    return home.bases / f"{digests.parse(disk_digest)}{SUFFIX}"


def _meta_path(base: Path) -> Path:
    return base.with_suffix(".meta")


def _identity(base: Path) -> dict[str, int]:
    st = base.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _unchanged(base: Path) -> bool:
    try:
        recorded = json.loads(_meta_path(base).read_text())
        return bool(recorded == _identity(base))
    except (OSError, ValueError):
        return False


def ensure(home: Home, disk_digest: str, *, progress: Progress | None = None) -> Path:
    """The verified base of a disk, materialized (or rebuilt) if needed."""
    base = path_for(home, disk_digest)
    if base.exists() and _unchanged(base):
        return base
    home.bases.mkdir(parents=True, exist_ok=True, mode=0o700)
    with file_lock(home.bases / f".{base.stem}.lock", timeout=600):
        if base.exists() and _unchanged(base):
            return base
        disk = home.store.get_disk(disk_digest)
        if base.exists() and not damage(base, disk):
            _record(base)  # only its stat changed (e.g. copied back); content is right
            return base
        _build(home, disk, base, progress)
    return base


def _build(home: Home, disk: DiskManifest, base: Path, progress: Progress | None = None) -> None:
    tmp = atomic.tmp_name(base.parent)
    try:
        with atomic.translated(f"base {base.name}"):
            materialize(home.store, disk, tmp, progress=progress)
            os.chmod(tmp, 0o444)
            os.replace(tmp, base)  # a damaged base is replaced whole; overlays keep the same path
            atomic.fsync_dir(base.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _record(base)


def _record(base: Path) -> None:
    atomic.replace(_meta_path(base), json.dumps(_identity(base)).encode())


def check(home: Home, disk_digest: str) -> Path:
    """A base that is about to be used: stat check, full check on mismatch; Corrupt if damaged."""
    base = path_for(home, disk_digest)
    if not base.exists():
        return ensure(home, disk_digest)
    if _unchanged(base):
        return base
    problem = damage(base, home.store.get_disk(disk_digest))
    if problem:
        raise Corrupt(f"base {base.name[:16]} is damaged: {problem}",
                      hint="run imgtool verify --repair to rebuild it from the store's chunks")
    _record(base)
    return base


def damage(base: Path, disk: DiskManifest) -> str | None:
    """What is wrong with a base compared to its manifest, or None if it is exact."""
    if base.stat().st_size != disk.virtual_size:
        return f"size {base.stat().st_size} instead of {disk.virtual_size}"
    with open(base, "rb") as handle:
        fd = handle.fileno()
        for index in sorted(set(disk.chunks) | _data_chunks(fd, disk)):
            data = os.pread(fd, disk.chunk_length(index), index * disk.chunk_size)
            expected = disk.chunks.get(index)
            if expected is None and data.count(0) != len(data):
                return f"chunk {index} should be zero"
            if expected is not None and codec.chunk_digest(data).hex() != expected:
                return f"chunk {index} does not match its digest"
    return None


def _data_chunks(fd: int, disk: DiskManifest) -> set[int]:
    """Chunk indexes that hold allocated data (SEEK_DATA/SEEK_HOLE); holes read as zero."""
    found: set[int] = set()
    offset = 0
    while offset < disk.virtual_size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break  # no more data
        end = os.lseek(fd, start, os.SEEK_HOLE)
        found.update(range(start // disk.chunk_size, (end - 1) // disk.chunk_size + 1))
        offset = end
    return found


def all_bases(home: Home) -> list[Path]:
    return sorted(home.bases.glob(f"*{SUFFIX}")) if home.bases.is_dir() else []


def used_disks(home: Home) -> set[str]:
    used: set[str] = set()
    for digest in vmrecord.used_base_disks(home):
        with contextlib.suppress(InvalidArgument):
            used.add(digests.parse(digest))
    return used


def unused(home: Home) -> list[Path]:
    used = used_disks(home)
    return [b for b in all_bases(home) if b.stem not in used]


def stale_temporaries(home: Home) -> list[Path]:
    """Half-written bases and .meta files whose writer is gone (a killed vm new, start or repair).

    Temporary names carry the writer's pid (store.atomic.tmp_name); a live pid's file is kept.
    """
    found = []
    for path in sorted(home.bases.glob(f"{atomic.TMP_PREFIX}*")) if home.bases.is_dir() else []:
        pid = path.name[len(atomic.TMP_PREFIX):].split("-", 1)[0]
        if not (pid.isdigit() and alive(int(pid))):
            found.append(path)
    return found


def size_on_disk(base: Path) -> int:
    try:
        return base.stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def evict(base: Path) -> None:
    base.unlink(missing_ok=True)
    _meta_path(base).unlink(missing_ok=True)


def verify_all(home: Home) -> list[Problem]:
    problems = []
    for base in all_bases(home):
        try:
            disk = home.store.get_disk(base.stem)
        except (Corrupt, NotFound):
            continue  # the manifest is what is damaged; the store's verify reports it and what it hits
        try:
            problem = damage(base, disk)
        except Exception as exc:  # any failure to check is itself a finding
            problem = f"cannot be checked: {exc}"
        if problem:
            problems.append(Problem("base", base.stem, problem))
    return problems


def repair_all(home: Home) -> list[str]:
    """Rebuild every damaged base from the store's chunks; returns the ones rebuilt."""
    rebuilt = []
    for problem in verify_all(home):
        base = home.bases / f"{problem.object}{SUFFIX}"
        with file_lock(home.bases / f".{base.stem}.lock", timeout=600):
            _build(home, home.store.get_disk(problem.object), base)
        rebuilt.append(problem.object)
    return rebuilt


def vms_on(home: Home, disk_hex: str) -> list[str]:
    return [r.name for r in vmrecord.load_records(home) if disk_hex in {digests.parse(d) for d in r.base_disks}]
