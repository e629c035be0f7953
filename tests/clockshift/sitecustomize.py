"""Loaded only by the clock-shift run (`scripts/test-clock`), which puts this folder on PYTHONPATH.

libfaketime 0.9.10 moves the whole process tree's clock, but two of its wrappers break CPython's
waits. With FAKETIME_DONT_FAKE_MONOTONIC=1 it still shifts the absolute deadline CPython's
`time.sleep` hands to clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME) by the fake offset, so with
the clock moved ahead the deadline lies before the monotonic epoch and the call fails with EINVAL
(`subprocess.wait` sleeps in a loop: that was the `OSError: [Errno 22]` a shifted `pull` died of).
Without that variable the monotonic deadlines of lock waits are faked while the kernel waits on the
real clock, and every timed wait hangs. So the run keeps monotonic real and sleeps with select(),
whose relative timeout libfaketime passes through.

Its third wrapper can hang a fork: pthread_cond_timedwait takes a read lock of libfaketime's for a
moment on every call, and a child of fork() makes its GIL anew through pthread_cond_init, which takes
that lock for writing. When another thread was inside that moment as the process forked (a thread
waiting for the GIL calls timedwait every switch interval, 5 ms), the child waits for ever (seen once:
`sh` forks in Python while pack-writer threads wait for the GIL). A switch interval of a second makes
those calls 200 times rarer; threads still hand over the GIL whenever the holder blocks on I/O.
Nothing in imgtool itself is changed.
"""

from __future__ import annotations

import select
import sys
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
sys.setswitchinterval(1.0)
