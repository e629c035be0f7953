"""A value computed in the background and shown with its age: `imgtool du` for the store page.

`du` reads every version record and marks every chunk (seconds on a home with 10,000 versions), so the
store page shows the last result with the time it was computed and starts a new count when that one is
older than `max_age`; the first visit says the count is under way. The count itself runs `imgtool du` as
a child process (imgtool/web/child.py); `/api/du` runs it on the spot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    value: dict[str, Any] | None
    computed_at: float | None  # the clock's time when the count finished
    computing: bool
    error: str | None = None


class Refreshing:
    def __init__(self, compute: Callable[[], dict[str, Any]], *, max_age: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._compute = compute
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at: float | None = None
        self._error: str | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> Snapshot:
        """The last value (None before the first count finished); starts a count when it is stale."""
        with self._lock:
            stale = self._at is None or self._clock() - self._at > self._max_age
            if stale and self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imgtool-serve-du", daemon=True)
                self._thread.start()
            return Snapshot(self._value, self._at, self._thread is not None, self._error)

    def wait(self, timeout: float) -> None:
        """Wait for a count under way (tests, and the benchmark's warm-up)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        try:
            value, error = self._compute(), None
        except Exception as exc:  # shown on the page; the next visit tries again
            value, error = None, f"{type(exc).__name__}: {exc}"
        with self._lock:
            if value is not None:
                self._value = value
            self._error = error
            self._at = self._clock()
            self._thread = None
