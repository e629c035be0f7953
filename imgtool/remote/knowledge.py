"""What a remote already holds: every chunk its imgtool versions' indexes locate, and where.

Learned from the version manifests of the target repository and its siblings (the other
definitions of the same gallery on the same remote), newest versions first, at most LEARN_LIMIT per
repository: a chunk only an older version holds is uploaded again, which costs bytes, never
correctness. Index blobs are cached under `<home>/cache/remote-indexes/` by sha256 and re-checked on
every read, so a second push reads each index once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from imgtool.errors import Corrupt, ImgtoolError, InvalidArgument, NotFound
from imgtool.names import Version
from imgtool.oci.descriptor import sha256_of
from imgtool.oci.target import Target, read_all
from imgtool.remote.format import DiskIndex, IndexEntry, VersionManifest, decode_index, parse_manifest
from store import atomic

LEARN_LIMIT = 50


@dataclass
class Known:
    chunks: dict[bytes, tuple[str, IndexEntry]] = field(default_factory=dict)  # BLAKE3 -> (repository, entry)
    pack_sizes: dict[str, int] = field(default_factory=dict)
    manifests: dict[tuple[str, str], VersionManifest] = field(default_factory=dict)  # (repo, tag) -> manifest

    def add(self, repo: str, manifest: VersionManifest, indexes: list[DiskIndex]) -> None:
        for pack in manifest.packs.values():
            self.pack_sizes[pack.digest] = pack.size
        for index in indexes:
            for entry in index.entries:
                held = self.chunks.get(entry.blake3)
                # Prefer a copy in the first repository learned (the target): no mount needed.
                if held is None:
                    self.chunks[entry.blake3] = (repo, entry)


def version_tags(tags: list[str]) -> list[str]:
    """Tags that are imgtool versions, highest first."""
    found: list[tuple[Version, str]] = []
    for tag in tags:
        with contextlib.suppress(InvalidArgument):
            found.append((Version.parse(tag), tag))
    return [tag for _v, tag in sorted(found, reverse=True)]


def load_index(target: Target, repo: str, manifest: VersionManifest, number: int, cache: Path | None) -> DiskIndex:
    descriptor = manifest.indexes[number]
    what = f"chunk index {descriptor.digest[:19]}… of {repo}"
    data: bytes | None = None
    cached = cache / descriptor.digest.removeprefix("sha256:") if cache is not None else None
    if cached is not None:
        with contextlib.suppress(OSError):
            data = cached.read_bytes()
        if data is not None and sha256_of(data) != descriptor.digest:
            data = None  # a damaged cache entry is only a cache miss
    if data is None:
        data = read_all(target.get_blob(repo, descriptor.digest, size=descriptor.size))
        if cached is not None:
            with contextlib.suppress(OSError, ImgtoolError):
                atomic.write_once(cached, [data])
    return decode_index(data, manifest.packs, what)


def learn(target: Target, repos: list[str], cache: Path | None) -> Known:
    known = Known()
    for repo in dict.fromkeys(repos):
        for tag in version_tags(target.tags(repo))[:LEARN_LIMIT]:
            try:
                fetched = target.get_manifest(repo, tag)
                manifest = parse_manifest(fetched.data, fetched.digest, f"{repo}:{tag}")
                indexes = [load_index(target, repo, manifest, n, cache) for n in range(len(manifest.indexes))]
            except (InvalidArgument, Corrupt, NotFound):
                continue  # not an imgtool version, or damaged: nothing in it is counted as present
            known.manifests[(repo, tag)] = manifest
            known.add(repo, manifest, indexes)
    return known
