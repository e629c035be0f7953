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
that lock for writing. When another thread was inside that moment as the process forked, the child
waits for ever before it runs a line of Python (seen twice, when `sh` forked in a test whose web view
ran threads). So os.fork here has the child say it is alive through a pipe; a child that says nothing
within FORK_PROOF seconds is killed and the fork made again.
Nothing in imgtool itself is changed.
"""

from __future__ import annotations

import os
import select
import signal
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


_real_fork = os.fork
FORK_PROOF = 10.0
FORK_TRIES = 5


def _fork() -> int:
    for _ in range(FORK_TRIES):
        read, write = os.pipe()
        pid = _real_fork()
        if pid == 0:
            os.close(read)
            os.write(write, b"!")
            os.close(write)
            return 0
        os.close(write)
        alive, _, _ = select.select([read], [], [], FORK_PROOF)
        os.close(read)
        if alive:
            return pid
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print(f"clock-shift: forked child {pid} hung in libfaketime; forking again", file=sys.stderr)
    raise OSError(f"fork: the child hung {FORK_TRIES} times in libfaketime's pthread_cond_init")


os.fork = _fork
