"""The store lock: writers share it, gc takes it exclusively.

Why this is enough to keep in-flight data alive: a capture or publish holds the
shared lock from its first chunk to its last name update, and gc sweeps only
under the exclusive lock, so gc can never see a half-finished write. Locks wait
with a timeout, and a holder file per process says who holds the lock. Readers of
packs hold it shared too (docs/STORE-FORMAT.md, "Locks and leases", "Invariants").
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from store import atomic
from store.errors import Locked, ReadOnlyStore

DEFAULT_TIMEOUT = 60.0
_held = threading.local()  # lock dir -> (exclusive?, depth) this thread holds


def holding(lock_dir: Path) -> bool:
    """Whether this thread already holds the store lock (in either mode)."""
    return str(lock_dir) in getattr(_held, "locks", {})


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (holder files of dead processes are stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(lock_dir: Path) -> list[dict[str, object]]:
    """Who holds the store lock now (stale holder files of dead processes are skipped)."""
    found: list[dict[str, object]] = []
    for path in sorted(lock_dir.glob("holder-*")):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and alive(int(info.get("pid", 0))):
            found.append(info)
    return found


def _describe(lock_dir: Path) -> str:
    who = holders(lock_dir)
    if not who:
        return "another imgtool process"
    return ", ".join(f"pid {h.get('pid')} ({h.get('command')}, {h.get('mode')})" for h in who)


@contextlib.contextmanager
def held(lock_dir: Path, *, exclusive: bool, timeout: float = DEFAULT_TIMEOUT,
         purpose: str = "", reader: bool = False) -> Iterator[None]:
    """Hold the store lock (shared or exclusive) for the duration of the block.

    Nested use in one thread is allowed: a shared request inside a held lock, or anything inside
    an exclusive one, reuses it (a second flock on a new descriptor would wait for ourselves).
    A `reader` (shared, writes nothing) also works on a store it cannot write: it locks through a
    read-only descriptor, or not at all when the lock file cannot even be opened there.
    Raises Locked after `timeout` seconds, naming the holders.
    """
    locks: dict[str, tuple[bool, int]] = _held.__dict__.setdefault("locks", {})
    key = str(lock_dir)
    if key in locks and (locks[key][0] or not exclusive):
        mode, depth = locks[key]
        locks[key] = (mode, depth + 1)
        try:
            yield
        finally:
            locks[key] = (mode, depth)
        return
    with _flocked(lock_dir, exclusive=exclusive, timeout=timeout, purpose=purpose, reader=reader):
        locks[key] = (exclusive, 1)
        try:
            yield
        finally:
            del locks[key]


@contextlib.contextmanager
def _flocked(lock_dir: Path, *, exclusive: bool, timeout: float, purpose: str, reader: bool) -> Iterator[None]:
    fd = _open(lock_dir, reader=reader)
    if fd is None:
        yield
        return
    try:
        _acquire(fd, lock_dir, exclusive=exclusive, timeout=timeout)
        holder = lock_dir / f"holder-{os.getpid()}-{id(fd)}"
        if exclusive:
            _prune_holders(lock_dir)
        command = _command(purpose)
        mode = "exclusive" if exclusive else "shared"
        # Best effort: on a full disk gc must still run (it is how space comes back), and the
        # holder file only serves to name us in someone else's timeout message.
        with contextlib.suppress(OSError):
            holder.write_text(json.dumps({"pid": os.getpid(), "command": command, "mode": mode}))
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # nothing to remove on a store we could not write
                holder.unlink(missing_ok=True)
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _open(lock_dir: Path, *, reader: bool) -> int | None:
    try:
        with atomic.translated("the store lock"):  # a read-only or full store is an error, not a crash
            atomic.makedirs(lock_dir)
            return os.open(lock_dir / "store.lock", os.O_RDWR | os.O_CREAT, 0o600)
    except ReadOnlyStore:
        if not reader:
            raise
    try:
        return os.open(lock_dir / "store.lock", os.O_RDONLY)  # flock needs no write access
    except OSError:
        return None  # nobody can write this store, so no gc can delete what we read


def _prune_holders(lock_dir: Path) -> None:
    """Remove holder files left by killed processes. Only called by the exclusive holder: while it
    holds the lock nobody else does, so every holder file there is stale."""
    for path in lock_dir.glob("holder-*"):
        path.unlink(missing_ok=True)


def _acquire(fd: int, lock_dir: Path, *, exclusive: bool, timeout: float) -> None:
    flag = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, flag | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise Locked(
                    f"the store is locked by {_describe(lock_dir)}",
                    hint=f"waited {timeout:g}s; retry when it finishes (gc needs the store to itself)",
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """A short exclusive lock on one file (name updates, VM records)."""
    with atomic.translated(path.name):
        atomic.makedirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Locked(f"{path.name} is locked by {_file_holder(fd)}",
                                 hint=f"waited {timeout:g}s; retry shortly") from None
                time.sleep(0.02)
        # The lock file itself says who holds it (read by whoever times out waiting); best effort,
        # since a full disk must not stop a command that only reads under this lock.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": _command("")}).encode(), 0)
        yield
    finally:
        os.close(fd)


def _file_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another imgtool process"
    return f"pid {pid} ({info.get('command')})" if alive(pid) else "another imgtool process"


def _command(purpose: str) -> str:
    return purpose or " ".join(os.path.basename(a) for a in sys.argv[:3])
