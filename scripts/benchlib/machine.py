"""The machine and tool versions a run was made on, and installing the peers from Debian when missing."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path

from benchlib.measure import drop_caches, log

# program -> Debian package that provides it
PACKAGES = {
    "qemu-img": "qemu-utils", "qemu-io": "qemu-utils", "qemu-nbd": "qemu-utils", "zstd": "zstd",
    "borg": "borgbackup", "restic": "restic", "casync": "casync", "cloud-localds": "cloud-image-utils",
    "mkfs.ext4": "e2fsprogs", "ssh-keygen": "openssh-client", "/usr/bin/time": "time",
}


def _out(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout or proc.stderr).decode(errors="replace").strip()


def _candidate(package: str) -> str | None:
    """The version apt would install, or None when Debian has no such package here."""
    for line in _out(["apt-cache", "policy", package]).splitlines():
        if line.strip().startswith("Candidate:"):
            value = line.split(":", 1)[1].strip()
            return None if value in ("", "(none)") else value
    return None


def ensure_programs(programs: set[str]) -> dict[str, str]:
    """Install the Debian packages of missing programs; return {program: why it is still missing}."""
    missing = sorted(p for p in programs if shutil.which(p) is None)
    if not missing:
        return {}
    packages = sorted({PACKAGES.get(p, p) for p in missing})
    log(f"installing from Debian: {' '.join(packages)}")
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    available = [p for p in packages if _candidate(p)]
    if available:
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *available], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    return {p: (f"Debian package {PACKAGES.get(p, p)} is not available here" if PACKAGES.get(p, p) not in available
                else f"installing {PACKAGES.get(p, p)} failed")
            for p in missing if shutil.which(p) is None}


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    return "unknown"


def _disk(path: Path) -> str:
    text = " ".join(_out(["findmnt", "-n", "-o", "SOURCE,FSTYPE,SIZE,AVAIL", "-T", str(path)]).split())
    return f"{text} (source, type, size, free)" if text else "unknown"


def cold_read_speed(path: Path) -> str:
    """Sequential read speed of `path` from a dropped page cache (8 MiB reads into one buffer)."""
    if not drop_caches():
        return "not measured (cannot drop the page cache)"
    buf = bytearray(8 << 20)
    total = 0
    start = time.perf_counter()
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    seconds = time.perf_counter() - start
    return f"{total / seconds / 1e9:.2f} GB/s cold sequential read ({total / 1e9:.1f} GB file)"


def _first_line(argv: list[str]) -> str:
    out = _out(argv)
    return out.splitlines()[0] if out else "missing"


def _deb(package: str) -> str:
    return _out(["dpkg-query", "-W", "-f", "${Version}", package]) or "missing"


def facts(cache: Path, code: str) -> dict[str, str]:
    """What the run was made on; `code` says which imgtool code was measured."""
    return {
        "cpu": f"{os.cpu_count()} x {_cpu_model()}",
        "memory": _memory(),
        "disk": _disk(cache),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "imgtool": code,
        "qemu-img": _first_line(["qemu-img", "--version"]),
        "zstd": _first_line(["zstd", "-V"]),
        "borg": _first_line(["borg", "--version"]),
        "restic": _first_line(["restic", "version"]),
        "casync": f"casync {_deb('casync')} (Debian)",
        "cloud-localds": f"cloud-image-utils {_deb('cloud-image-utils')} (Debian)",
        "mkfs.ext4": f"e2fsprogs {_deb('e2fsprogs')} (Debian)",
    }
