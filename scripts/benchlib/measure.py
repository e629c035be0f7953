"""Run one command and measure it: wall seconds, CPU seconds (user + system) and peak memory.

The benchmark calls programs directly (not through imgtool/run.py) because it needs the kernel's
resource usage of the whole process tree, which os.wait4 gives for the child and every descendant it
waited for. Peak memory is ru_maxrss: the largest single process in that tree, not the sum. It is read
through GNU time (`/usr/bin/time -f %M`), not from our own wait4: Python starts children with vfork, and
Linux carries the parent's peak RSS over exec into the child's, so wait4 would report this harness's
own memory for every command.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

GNU_TIME = "/usr/bin/time"  # Debian package `time`


class BenchError(RuntimeError):
    """A benchmarked or helper command failed; the message holds its argv and stderr."""


@dataclass(frozen=True)
class Step:
    """One command to run: argv, extra environment, working folder."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None


@dataclass(frozen=True)
class Sample:
    wall: float
    cpu: float
    max_rss_kib: int
    others: float = 0.0  # CPU cores busy with other processes meanwhile (the machine may be shared)

    def to_json(self) -> dict[str, float]:
        return {"wall": self.wall, "cpu": self.cpu, "max_rss_kib": self.max_rss_kib, "others": self.others}


def _busy_seconds() -> float:
    """CPU seconds all processes have used since boot (every field of /proc/stat's cpu line but idle/iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _fail(argv: Sequence[str], code: int, err: bytes) -> BenchError:
    tail = err.decode(errors="replace").strip()[-2000:]
    return BenchError(f"command failed ({code}): {' '.join(map(str, argv))}\n{tail}")


def timed(step: Step) -> Sample:
    """Run `step` to completion (stdout discarded) and return its resource usage. Raises BenchError."""
    env = {**os.environ, **step.env}
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as rss:
        argv = [GNU_TIME, "-f", "%M", "-o", rss.name, *step.argv]
        busy = _busy_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env, cwd=step.cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        busy = _busy_seconds() - busy
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen never waits again
        if proc.returncode != 0:
            err.seek(0)
            raise _fail(step.argv, proc.returncode, err.read())
        max_rss = int(rss.read().strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return Sample(wall, cpu, max_rss, max(0.0, busy - cpu) / wall if wall > 0 else 0.0)


def sh(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
       input: bytes | None = None) -> str:
    """Run a helper command (not measured); return its stdout. Raises BenchError on failure."""
    proc = subprocess.run([str(a) for a in argv], input=input, capture_output=True, check=False,
                          env={**os.environ, **(env or {})}, cwd=cwd)
    if proc.returncode != 0:
        raise _fail([str(a) for a in argv], proc.returncode, proc.stderr)
    return proc.stdout.decode(errors="replace")


def drop_caches() -> bool:
    """Write back dirty pages and drop the page cache (needs root). True if it was dropped."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def median_sample(samples: Iterable[Sample]) -> Sample:
    """Per-field medians (each field on its own, as the tables report them)."""
    items = list(samples)
    return Sample(statistics.median(s.wall for s in items), statistics.median(s.cpu for s in items),
                  int(statistics.median(s.max_rss_kib for s in items)), statistics.median(s.others for s in items))


def tree_size(paths: Iterable[Path]) -> tuple[int, int]:
    """(apparent bytes, regular files) under the given files and folders."""
    total = files = 0
    for root in paths:
        if root.is_file():
            total, files = total + root.stat().st_size, files + 1
            continue
        for folder, _, names in os.walk(root):
            for name in names:
                st = os.lstat(os.path.join(folder, name))
                if not os.path.islink(os.path.join(folder, name)):
                    total, files = total + st.st_size, files + 1
    return total, files


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
