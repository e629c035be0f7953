"""A time bound for every response body: a registry that sends slowly (or endlessly slowly) is cut off.

httpx's timeouts bound each read, so a body that trickles one byte a second never times out, and a
check between pieces never runs either (iter_bytes waits for a whole piece). Each
body read here gets a deadline of GRACE seconds plus its expected size at MIN_RATE; when it passes,
a timer closes the response, the blocked read fails, and the caller gets one RemoteFailed that says
so. Bounded time, whatever the remote does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx

from imgtool.remote.errors import RemoteFailed

GRACE = 60.0  # seconds any body may take on top of its size at MIN_RATE
MIN_RATE = 64 << 10  # bytes per second a body must average


def expected_size(response: httpx.Response, fallback: int) -> int:
    declared = response.headers.get("content-length", "")
    return min(int(declared), fallback) if declared.isdigit() else fallback


@contextlib.contextmanager
def bounded(response: httpx.Response, size: int, *, label: str, what: str) -> Iterator[None]:
    """Read `response` (about `size` bytes) inside the block; RemoteFailed if it outlives its deadline."""
    seconds = GRACE + size / MIN_RATE
    fired = threading.Event()

    def cut() -> None:
        fired.set()
        response.close()

    timer = threading.Timer(seconds, cut)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (httpx.TransportError, httpx.StreamError, OSError) as exc:
        if fired.is_set():
            raise RemoteFailed(f"{label}: {what} took longer than {seconds:.0f} s (slower than "
                               f"{MIN_RATE >> 10} KiB/s)", hint="the remote is stalled or too slow; try again later") \
                from None
        if isinstance(exc, httpx.TransportError):
            raise
        raise RemoteFailed(f"{label}: reading {what} broke off ({type(exc).__name__})",
                           hint="run the command again") from None
    finally:
        timer.cancel()
