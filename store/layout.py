"""Every path in a store, in one pure object (the tree: docs/STORE-FORMAT.md, "Layout").

Digests are validated (store.digest.parse) and name components checked before
they become paths; this module does no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from store import digest
from store.errors import InvalidArgument

NAME_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_component(part: str) -> str:
    """A name component that is safe as one path segment, or InvalidArgument."""
    if not NAME_COMPONENT.fullmatch(part) or ".." in part:  # `$` also matches before a final "\n"
        raise InvalidArgument(
            f"{part!r} cannot be used as a name",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..'",
        )
    return part


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "store.json"

    @property
    def packs(self) -> Path:
        return self.root / "packs"

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def names(self) -> Path:
        return self.root / "names"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def log(self) -> Path:
        return self.root / "log"

    def pack(self, hex_digest: str) -> Path:
        bare = digest.parse(hex_digest)
        return self.packs / bare[:2] / f"{bare}.pack"

    def pack_index(self, hex_digest: str) -> Path:
        bare = digest.parse(hex_digest)
        return self.packs / bare[:2] / f"{bare}.idx"

    def manifest(self, hex_digest: str) -> Path:
        bare = digest.parse(hex_digest)
        return self.manifests / bare[:2] / bare

    def name(self, namespace: str, *key: str) -> Path:
        parts = [check_component(namespace), *(check_component(k) for k in key)]
        return self.names.joinpath(*parts)

    def directories(self) -> list[Path]:
        return [self.packs, self.manifests, self.names, self.locks, self.tmp, self.log]
