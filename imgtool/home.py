"""Where imgtool keeps its data, and the handles every command starts from.

    <home>/store/    the content-addressed store (store/ package)
    <home>/vms/      one folder per VM: record, overlays, seed, runtime files
    <home>/bases/    read-only materialized disks that VM overlays stand on
    <home>/cache/    probe answers and other rebuildable facts

Home is `--home`, else $IMGTOOL_HOME, else $XDG_DATA_HOME/imgtool, else
~/.local/share/imgtool; created private to the user (0700).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from imgtool.errors import InvalidArgument, ReadOnlyStore

if TYPE_CHECKING:
    from store.repo import Store


def _default() -> tuple[Path, str]:
    """The home and where it came from (for messages)."""
    if os.environ.get("IMGTOOL_HOME"):
        return Path(os.environ["IMGTOOL_HOME"]), "$IMGTOOL_HOME"
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]) / "imgtool", "$XDG_DATA_HOME/imgtool"
    return Path.home() / ".local" / "share" / "imgtool", "the default ~/.local/share/imgtool"


def _checked(root: Path, origin: str) -> Path:
    text = str(root)
    if not text or "\0" in text or "\n" in text:
        raise InvalidArgument(f"the imgtool home {text!r} (from {origin}) is not a usable path",
                              hint="set --home or IMGTOOL_HOME to a folder path")
    return root


@dataclass
class Home:
    root: Path
    origin: str = field(default="--home", compare=False)

    @classmethod
    def at(cls, root: Path | None) -> Home:
        found, origin = (Path(root), "--home") if root is not None else _default()
        home = cls(_checked(found, origin).absolute(), origin)
        existing = next((p for p in (home.root, *home.root.parents) if p.exists() or p.is_symlink()), None)
        if existing is not None and not existing.is_dir():  # even commands that only read say so
            raise home._error(home.root, FileExistsError(errno.EEXIST, "not a folder", str(existing)))
        return home

    def ensure(self) -> None:
        """Create the home's folders; a home that cannot be one is the user's error, said as such."""
        for sub in (self.root, self.vms, self.bases, self.cache):
            try:
                sub.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not sub.is_dir():
                    raise FileExistsError(errno.EEXIST, "not a folder", str(sub))
            except OSError as exc:
                raise self._error(sub, exc) from None

    def _error(self, path: Path, exc: OSError) -> Exception:
        where = f"the imgtool home {self.root} (from {self.origin})"
        fix = "set --home or IMGTOOL_HOME to a folder you can write"
        if exc.errno == errno.EROFS:
            return ReadOnlyStore(f"{where} is on a read-only file system", hint=fix)
        if exc.errno in (errno.EEXIST, errno.ENOTDIR):
            thing = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
            return InvalidArgument(f"{where} cannot be a folder: {thing} is a file", hint=fix)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return InvalidArgument(f"{where}: permission denied creating {path}", hint=fix)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise exc  # the CLI reports a full disk as such
        return InvalidArgument(f"{where}: cannot create {path}: {exc.strerror}", hint=fix)

    @cached_property
    def store(self) -> Store:
        from store.repo import Store  # noqa: PLC0415 - lazily: the CLI imports Home on every start

        self.ensure()
        return Store.open(self.store_root)

    @property
    def store_root(self) -> Path:
        return self.root / "store"

    @property
    def vms(self) -> Path:
        return self.root / "vms"

    @property
    def bases(self) -> Path:
        return self.root / "bases"

    @property
    def cache(self) -> Path:
        return self.root / "cache"
