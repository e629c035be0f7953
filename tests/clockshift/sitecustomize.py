"""Loaded only by the clock-shift run (`scripts/test-clock`), which puts this folder on PYTHONPATH.

libfaketime 0.9.10 moves the whole process tree's clock, but two of its wrappers break CPython's
waits. With FAKETIME_DONT_FAKE_MONOTONIC=1 it still shifts the absolute deadline CPython's
`time.sleep` hands to clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) by the fake offset, so with
the clock moved ahead the deadline lies before the monotonic epoch and the call fails with EINVAL
(`subprocess.wait` sleeps in a loop: that was the `OSError: [Errno 22]` a shifted `pull` died of).
Without that variable the monotonic deadlines of lock waits are faked while the kernel waits on the
real clock, and every timed wait hangs. So the run keeps monotonic real and sleeps with select(),
whose relative timeout libfaketime passes through. Nothing in imgtool itself is changed.
"""

from __future__ import annotations

import select
import time
from typing import SupportsIndex


def _sleep(secs: float | SupportsIndex) -> None:
    seconds = float(secs)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep
