"""Disk manifests: a disk's guest-visible content as a list of chunks.

The fields (`virtual_size`, `chunk_size`, `chunks`, `data_bytes`) are specified in
docs/STORE-FORMAT.md ("Disk manifest"). Chunks not listed are all zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from store import digest
from store.canonical import JsonObject
from store.errors import Corrupt

FORMAT = 1
KIND = "disk"


@dataclass(frozen=True)
class DiskManifest:
    virtual_size: int
    chunk_size: int
    chunks: dict[int, str] = field(default_factory=dict)  # chunk index -> hex digest

    def to_json(self) -> JsonObject:
        return {
            "format": FORMAT,
            "kind": KIND,
            "virtual_size": self.virtual_size,
            "chunk_size": self.chunk_size,
            "chunks": [[i, self.chunks[i]] for i in sorted(self.chunks)],
            "data_bytes": sum(self.chunk_length(i) for i in self.chunks),
        }

    @classmethod
    def from_json(cls, obj: JsonObject, *, what: str = "disk manifest") -> DiskManifest:
        if obj.get("kind") != KIND:
            raise Corrupt(f"{what} is not a disk manifest", hint="check the digest you gave")
        if obj.get("format") != FORMAT:
            raise Corrupt(f"{what} has unknown format {obj.get('format')!r}",
                          hint="it was written by a newer release; upgrade to read it")
        try:
            size, chunk_size = int(obj["virtual_size"]), int(obj["chunk_size"])
            chunks = {int(i): digest.parse(str(h)) for i, h in obj["chunks"]}
        except (KeyError, TypeError, ValueError) as exc:
            raise Corrupt(f"{what} is malformed: {exc}", hint="a verify of the store shows what it affects") from exc
        return cls(size, chunk_size, chunks)

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.virtual_size - index * self.chunk_size)

    def chunk_digests(self) -> set[str]:
        return set(self.chunks.values())
