"""Write-once, atomic files: the only way bytes enter the store.

Contract: the target either does not exist or holds exactly the bytes that were
verified; a crash leaves at worst a `.tmp-*` file, which is never read as data
and is removed by gc. Write to a temporary name in the target's directory,
fsync it, verify, link/rename into place, fsync the directory, make it read-only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from store import direct
from store.errors import ReadOnlyStore, StorageFull

TMP_PREFIX = ".tmp-"


def tmp_name(directory: Path) -> Path:
    return directory / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def translate_os_error(exc: OSError, what: str) -> Exception:
    """Turn disk-full and read-only errors into the store's own categories."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left while writing {what}",
                           hint="free space on the store's filesystem, then retry (names are unchanged; "
                                "garbage collection reclaims what the unfinished write left)")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ReadOnlyStore(f"cannot write {what}: {exc.strerror}",
                             hint="the store is read-only here; reading commands still work")
    return exc


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise translate_os_error(exc, what) from exc


def makedirs(directory: Path) -> None:
    """Create `directory` and its missing parents, each private to the user (0700).

    Path.mkdir(parents=True) would give the parents the default 0755.
    """
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent writer made it
            path.mkdir(mode=0o700)


def _write_tmp(directory: Path, chunks: list[bytes | memoryview]) -> Path:
    tmp = tmp_name(directory)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        direct.write_all(fd, chunks)  # large files (packs) bypass the page cache
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def write_once(
    target: Path,
    chunks: list[bytes | memoryview],
    *,
    verify: Callable[[Path], None] | None = None,
    mode: int = 0o444,
) -> bool:
    """Create `target` with the concatenated `chunks`, unless it already exists.

    Returns True if this call created it, False if it was already there (same
    name means same content in a content-addressed store). `verify` re-reads the
    temporary file before it is published and raises if it is wrong.
    """
    if target.exists():
        return False
    with translated(str(target.name)):
        makedirs(target.parent)
        tmp = _write_tmp(target.parent, chunks)
        try:
            if verify is not None:
                verify(tmp)
            os.chmod(tmp, mode)
            os.link(tmp, target)  # link, not rename: an existing target is never replaced
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)
    return True


def replace(target: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Atomically replace `target` with `data` (for names and records, not blobs)."""
    with translated(str(target.name)):
        makedirs(target.parent)
        tmp = _write_tmp(target.parent, [data])
        try:
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(target.parent)


def create(target: Path, data: bytes, *, mode: int = 0o600) -> bool:
    """Atomically create `target` with `data`; False if it already exists."""
    return write_once(target, [data], mode=mode)


def remove_tree(path: Path) -> None:
    """Remove a file or a folder with everything in it, never following symlinks out of it."""
    if path.is_dir() and not path.is_symlink():
        for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if child.is_dir() and not child.is_symlink():
                child.rmdir()
            else:
                child.unlink(missing_ok=True)
        path.rmdir()
    else:
        path.unlink(missing_ok=True)
