"""The realistic test disks, built once and cached under .cache/bench/disk-<profile>/.

v1        an ext4 file system (mkfs.ext4 -d) holding real files copied from the host's /usr, as raw
          (v1.raw, sparse) and qcow2 (v1.qcow2: what imgtool and qemu-img ingest).
changes   scattered writes of real file bytes (not from v1) at 4 KiB-aligned offsets inside v1's data,
          until about 5% of v1's data bytes differ. The same writes go into a VM's overlay with qemu-io,
          which is how a guest changes its disk.
v2        v1 with the changes (v2.raw), and v2 flattened to a standalone qcow2 (v2-flat.qcow2): what the
          peers ingest, since they cannot read a qcow2 overlay.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from benchlib.measure import log, sh

BUILD_FORMAT = 3  # bump when the recipe changes, so cached disks are rebuilt
SOURCE_ROOT = Path("/usr")
WRITE_SIZES = (4 << 10, 64 << 10, 512 << 10, 2 << 20)  # from file-system metadata to a rewritten file
ALIGN = 4096
QEMU_IO_BATCH = 100  # qemu-io commands per invocation (keeps argv short)


@dataclass(frozen=True)
class Profile:
    name: str
    virtual_size: int
    file_bytes: int  # how much of /usr goes into the file system
    change_fraction: float = 0.05
    seed: int = 5


@dataclass(frozen=True)
class Change:
    offset: int
    length: int
    pattern: str  # file whose bytes are written (qemu-io write -s)


@dataclass(frozen=True)
class Disks:
    folder: Path
    profile: Profile
    v1_raw: Path
    v1_qcow2: Path
    v2_raw: Path
    v2_flat: Path
    changes: tuple[Change, ...]
    facts: dict[str, int]  # files, file_bytes, data_bytes, changed_bytes


def _sampled_files(root: Path, seed: int) -> list[tuple[Path, int]]:
    """Every regular file under `root` in a fixed pseudo-random order (a representative mix at any budget)."""
    found: list[tuple[str, Path, int]] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            path = Path(folder) / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if path.is_file() and not path.is_symlink() and st.st_size > 0 and os.access(path, os.R_OK):
                key = hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).hexdigest()
                found.append((key, path, st.st_size))
    found.sort()
    return [(path, size) for _, path, size in found]


def _stage(files: list[tuple[Path, int]], budget: int, staging: Path) -> tuple[int, int, int]:
    """Copy files into `staging` until `budget` bytes; return (files copied, bytes, index of the next file)."""
    copied = total = 0
    i = 0
    while i < len(files) and total < budget:
        path, size = files[i]
        i += 1
        target = staging / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(path, target)
        except OSError:
            continue
        copied, total = copied + 1, total + size
    return copied, total, i


def _pattern_stream(files: list[tuple[Path, int]], need: int) -> bytes:
    """`need` bytes of real file contents (files v1 does not hold)."""
    parts: list[bytes] = []
    have = 0
    for path, _ in files:
        if have >= need:
            break
        try:
            data = path.read_bytes()
        except OSError:
            continue
        parts.append(data)
        have += len(data)
    if have < need:
        raise RuntimeError(f"only {have} bytes of spare files under {SOURCE_ROOT} for the changes")
    return b"".join(parts)[:need]


def _data_extents(raw: Path) -> list[tuple[int, int]]:
    extents = json.loads(sh(["qemu-img", "map", "--output=json", "-f", "raw", raw]))
    return [(int(e["start"]), int(e["length"])) for e in extents if e["data"]]


def _plan_changes(extents: list[tuple[int, int]], virtual_size: int, fraction: float,
                  seed: int) -> list[tuple[int, int]]:
    """Scattered (offset, length) writes inside the data until `fraction` of the data bytes are covered."""
    rng = random.Random(seed)
    data_bytes = sum(length for _, length in extents)
    weights = [length for _, length in extents]
    covered: set[int] = set()  # 4 KiB blocks written so far
    writes: list[tuple[int, int]] = []
    while len(covered) * ALIGN < fraction * data_bytes:
        start, length = rng.choices(extents, weights)[0]
        size = rng.choice(WRITE_SIZES)
        offset = start + rng.randrange(0, max(1, length // ALIGN)) * ALIGN
        offset = min(offset, virtual_size - size)
        writes.append((offset, size))
        covered.update(range(offset // ALIGN, (offset + size) // ALIGN))
    return sorted(writes)


def apply_changes(target: Path, fmt: str, changes: tuple[Change, ...]) -> None:
    """Write the changes into `target` (raw, or a qcow2 overlay) the way a guest would, through QEMU."""
    for i in range(0, len(changes), QEMU_IO_BATCH):
        argv: list[str | Path] = ["qemu-io", "-f", fmt, target]
        for change in changes[i:i + QEMU_IO_BATCH]:
            argv += ["-c", f"write -q -s {change.pattern} {change.offset} {change.length}"]
        sh(argv)


def _build(profile: Profile, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    staging = folder / "staging"
    log(f"building the {profile.name} disk: copying ~{profile.file_bytes >> 20} MiB of {SOURCE_ROOT} files")
    files = _sampled_files(SOURCE_ROOT, profile.seed)
    count, total, next_file = _stage(files, profile.file_bytes, staging)
    v1_raw = folder / "v1.raw"
    with v1_raw.open("wb") as f:
        f.truncate(profile.virtual_size)
    sh(["mkfs.ext4", "-q", "-F", "-L", "bench", "-U", "5f0c53a8-5e5e-4b0e-9b0c-000000000005",
        "-E", "root_owner=0:0", "-d", staging, v1_raw])
    shutil.rmtree(staging)
    sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", v1_raw, folder / "v1.qcow2"])
    extents = _data_extents(v1_raw)
    plan = _plan_changes(extents, profile.virtual_size, profile.change_fraction, profile.seed)
    log(f"v1: {count} files, {total >> 20} MiB; changing {len(plan)} places for v2")
    stream = _pattern_stream(files[next_file:], sum(length for _, length in plan))
    patterns = folder / "patterns"
    patterns.mkdir()
    changes, pos = [], 0
    for n, (offset, length) in enumerate(plan):
        pattern = patterns / f"{n:05d}.bin"
        pattern.write_bytes(stream[pos:pos + length])
        pos += length
        changes.append(Change(offset, length, str(pattern)))
    sh(["cp", "--sparse=always", v1_raw, folder / "v2.raw"])
    apply_changes(folder / "v2.raw", "raw", tuple(changes))
    sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", folder / "v2.raw", folder / "v2-flat.qcow2"])
    blocks = {b for c in changes for b in range(c.offset // ALIGN, (c.offset + c.length) // ALIGN)}
    facts = {"files": count, "file_bytes": total, "data_bytes": sum(n for _, n in extents),
             "changed_bytes": len(blocks) * ALIGN, "writes": len(changes)}
    meta = {"format": BUILD_FORMAT, "profile": asdict(profile), "facts": facts,
            "changes": [asdict(c) for c in changes]}
    (folder / "disks.json").write_text(json.dumps(meta, indent=1))


def ensure_disks(profile: Profile, cache: Path, *, rebuild: bool = False) -> Disks:
    """The profile's disks, from the cache when it was built by this recipe, else built now."""
    folder = cache / f"disk-{profile.name}"
    meta_path = folder / "disks.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() and not rebuild else None
    if meta is None or meta.get("format") != BUILD_FORMAT or meta.get("profile") != asdict(profile):
        _build(profile, folder)
        meta = json.loads(meta_path.read_text())
    else:
        log(f"using the cached {profile.name} disk in {folder}")
    changes = tuple(Change(**c) for c in meta["changes"])
    return Disks(folder, profile, folder / "v1.raw", folder / "v1.qcow2", folder / "v2.raw",
                 folder / "v2-flat.qcow2", changes, dict(meta["facts"]))
