"""Test images made with the real qemu-img and qemu-io: data, explicit zeros, holes."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

MiB = 1 << 20


def qemu_io(path: Path, fmt: str, *commands: str) -> None:
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)


def make_disk(path: Path, *, size_mib: int = 64, fmt: str = "qcow2", seed: int = 0xAB) -> Path:
    """A disk with data at several places, an explicitly zeroed range and unallocated gaps."""
    raw = path.with_suffix(".src.raw") if fmt != "raw" else path
    subprocess.run(["qemu-img", "create", "-f", "raw", str(raw), f"{size_mib}M"], check=True, capture_output=True)
    qemu_io(raw, "raw",
            f"write -P {seed} 0 1M",
            f"write -P {(seed + 1) % 256} 3M 300k",
            f"write -z {size_mib // 2}M 1M",
            f"write -P {(seed + 2) % 256} {size_mib - 1}M 1M")
    if fmt != "raw":
        convert(raw, path, "raw", fmt)
        raw.unlink()
    return path


def convert(src: Path, dst: Path, src_fmt: str, dst_fmt: str, *options: str) -> None:
    argv = ["qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt, *options, str(src), str(dst)]
    subprocess.run(argv, check=True, capture_output=True)


def identical(a: Path, b: Path, fmt_a: str, fmt_b: str) -> bool:
    done = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)], capture_output=True,
                          check=False)
    return done.returncode == 0


def tree_fingerprint(root: Path) -> dict[str, str]:
    """Every file under root with a hash of its bytes (to prove a store did not change)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "locks" not in path.parts:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found
