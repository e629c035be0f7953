"""A value computed in the background and shown with its age: `imgtool du` for the store page and /api/du.

`du` reads every version record, marks every chunk and walks the home's files (seconds on a home with
10,000 versions), so the server counts it once when it starts (before it prints its URL) and keeps the
last result with the time it was counted and the state of the home it was counted from (`key`). A
result is current while that state is unchanged: what the key reads (folder stamps, the name log)
moves with every publish, capture, gc and new VM. It does not move while a running VM writes into its
own disk or log; while `ages` says that can happen (app.py: some VM runs), a result is current for
`max_age` seconds only. The store page shows the last result at once (and starts a new count when it
is not current); /api/du waits for a current one. The count itself runs `imgtool du` as a child
process (imgtool/web/child.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    value: dict[str, Any] | None
    computed_at: float | None  # the clock's time when the count finished
    computing: bool
    error: str | None = None
    failure: Exception | None = None  # the last count's exception, when it failed


def _no_key() -> Hashable:
    return ()


class Refreshing:
    def __init__(self, compute: Callable[[], dict[str, Any]], *, key: Callable[[], Hashable | None] = _no_key,
                 ages: Callable[[], bool] = lambda: True, max_age: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        """key: the state the value depends on (None: cannot tell now, so never current); ages: whether
        the value can now go stale without the key moving (then it is current for max_age seconds)."""
        self._compute = compute
        self._key = key
        self._ages = ages
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._at: float | None = None
        self._counted_key: Hashable | None = None
        self._failure: Exception | None = None
        self._thread: threading.Thread | None = None

    def get(self) -> Snapshot:
        """The last value (None before the first count finished); starts a count when it is not current."""
        current = self._current_key()
        with self._lock:
            if not self._is_current(current) and self._thread is None:
                self._start(current)
            return self._snapshot()

    def fresh(self, timeout: float) -> Snapshot:
        """A current value: the last one when it still is, else the one a count started now (or already
        under way) gives, waiting for it at most `timeout` seconds."""
        current = self._current_key()
        with self._lock:
            if self._is_current(current) and self._thread is None:
                return self._snapshot()
            if self._thread is None:
                self._start(current)
            thread = self._thread
        assert thread is not None
        thread.join(timeout)
        with self._lock:
            return self._snapshot()

    def wait(self, timeout: float) -> None:
        """Wait for a count under way (start-up, tests, the benchmark)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _current_key(self) -> Hashable | None:
        try:
            return self._key()
        except OSError:  # a folder removed while it was read: cannot tell
            return None

    def _is_current(self, key: Hashable | None) -> bool:
        if self._at is None or self._failure is not None or key is None or key != self._counted_key:
            return False
        return self._clock() - self._at <= self._max_age or not self._aging()

    def _aging(self) -> bool:
        try:
            return self._ages()
        except Exception:  # cannot tell: as if it could
            return True

    def _start(self, key: Hashable | None) -> None:
        self._thread = threading.Thread(target=self._run, args=(key,), name="imgtool-serve-du", daemon=True)
        self._thread.start()

    def _snapshot(self) -> Snapshot:
        error = None if self._failure is None else f"{type(self._failure).__name__}: {self._failure}"
        return Snapshot(self._value, self._at, self._thread is not None, error, self._failure)

    def _run(self, key: Hashable | None) -> None:
        value: dict[str, Any] | None = None
        failure: Exception | None = None
        try:
            value = self._compute()
        except Exception as exc:  # shown on the page and by /api/du; the next visit tries again
            failure = exc
        with self._lock:
            if value is not None:
                self._value = value
                self._counted_key = key
            self._failure = failure
            self._at = self._clock()
            self._thread = None
