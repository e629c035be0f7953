"""Where imgtool keeps its data, and the handles every command starts from.

    <home>/store/    the content-addressed store (store/ package)
    <home>/vms/      one folder per VM: record, overlays, seed, runtime files
    <home>/bases/    read-only materialized disks that VM overlays stand on
    <home>/cache/    probe answers and other rebuildable facts

Home is `--home`, else $IMGTOOL_HOME, else $XDG_DATA_HOME/imgtool, else
~/.local/share/imgtool; created private to the user (0700).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from store.repo import Store


def default_home() -> Path:
    if os.environ.get("IMGTOOL_HOME"):
        return Path(os.environ["IMGTOOL_HOME"])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "imgtool"


@dataclass
class Home:
    root: Path

    @classmethod
    def at(cls, root: Path | None) -> Home:
        return cls(Path(root or default_home()).absolute())

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub in (self.vms, self.bases, self.cache):
            sub.mkdir(exist_ok=True, mode=0o700)

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
