"""The file system's clock: the mtime a file written now would get.

A file's age is its mtime against *this*, never against the process's wall clock. Whatever stamped
the mtime (the kernel's clock at write time, or an NFS server's) may disagree with the clock the
process reads now: after an NTP step, on a network file system with a skewed server, or in a
process whose clock was moved (the test suite runs under faketime years ahead and behind). Against
the wall clock a lease written a second ago could look years old and let gc collect a capture in
flight, or a racy cache look safely old.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def now_ns(folder: Path) -> int:
    """The mtime (ns) of a file made in `folder` now, which is removed again.

    Falls back to the wall clock only where nothing can be written (a read-only store is never
    collected or optimized, so only reports take that path).
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".tmp-clock-", dir=folder)
    except OSError:
        return time.time_ns()
    try:
        return os.fstat(fd).st_mtime_ns
    finally:
        os.close(fd)
        os.unlink(name)


def now(folder: Path) -> float:
    """`now_ns` in seconds, as `os.stat().st_mtime` gives them."""
    return now_ns(folder) / 1e9
