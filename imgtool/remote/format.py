"""The registry format of imgtool versions (docs/STORE-FORMAT.md, Remote format says the same, with the bytes).

- Repository: PREFIX/GALLERY/DEFINITION, each name mapped by `repo_component` (lower case as is
  when that is a valid, unambiguous repository component; otherwise `x--` + base32 of the name).
- Tag: the version, `X.Y.Z`.
- Manifest: an OCI 1.1 image manifest, artifactType VERSION_TYPE, config CONFIG_TYPE (the version,
  definition and gallery records), layers: one chunk index per disk (INDEX_TYPE), then the packs
  (PACK_TYPE) those indexes point into, in order of first use.
- A pack is zstd frames, one per chunk (a local pack's optimized spans are split back into one frame
  per chunk on push); the index locates every chunk.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import struct
from dataclasses import dataclass
from typing import Any

from imgtool import strict
from imgtool.errors import Corrupt, InvalidArgument
from imgtool.names import REPOSITORY_COMPONENT
from imgtool.oci import media
from imgtool.oci.descriptor import Descriptor, canonical_ascii
from imgtool.oci.descriptor import manifest_bytes as oci_manifest_bytes
from imgtool.oci.target import MAX_MANIFEST

VERSION_TYPE = media.VERSION
CONFIG_TYPE = media.CONFIG
INDEX_TYPE = media.CHUNK_INDEX
PACK_TYPE = media.PACK
CONFIG_FORMAT = 1
MAX_CONFIG = 4 << 20
MAX_INDEX = 128 << 20  # 60 bytes a chunk: 2.2 million chunks, 280 GiB of data at 128 KiB
MAX_PACK = 1 << 30
MAX_LAYERS = 20_000  # at ~32 MiB per pack: 600 GiB of new data in one version, inside the 4 MiB manifest

ENCODED = "x--"


def repo_component(name: str) -> str:
    """An imgtool name as one repository path component; reversible (see name_of_component).

    Lower-case names that are valid components stay as they are; anything else (upper case, which
    lower-casing would merge with another name, or separators distribution refuses) becomes
    `x--` + lower-case base32 of the UTF-8 name without padding, and so does a name that itself starts
    with `x--`, so the two forms never collide.
    """
    if name == name.lower() and REPOSITORY_COMPONENT.fullmatch(name) and not name.startswith(ENCODED):
        return name
    return ENCODED + base64.b32encode(name.encode()).decode("ascii").rstrip("=").lower()


def name_of_component(component: str) -> str:
    if not component.startswith(ENCODED):
        return component
    text = component[len(ENCODED):].upper()
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidArgument(f"repository component {component!r} is not an encoded imgtool name",
                              hint="see docs/STORE-FORMAT.md, Remote format, name mapping") from None


def repository(prefix: str, gallery: str, definition: str) -> str:
    parts = [p for p in prefix.split("/") if p] + [repo_component(gallery), repo_component(definition)]
    return "/".join(parts)


# -- descriptors and manifests ---------------------------------------------------------------------


def manifest_bytes(config: Descriptor, layers: list[Descriptor], annotations: dict[str, str]) -> bytes:
    """Deterministic bytes: the same version pushed twice gives the same manifest digest."""
    return oci_manifest_bytes(config, layers, annotations, artifact_type=VERSION_TYPE)


@dataclass(frozen=True)
class VersionManifest:
    digest: str
    config: Descriptor
    indexes: list[Descriptor]
    packs: dict[str, Descriptor]  # digest -> descriptor
    annotations: dict[str, str]


def parse_manifest(data: bytes, digest: str, what: str) -> VersionManifest:
    """Check an imgtool version manifest's shape; anything else is refused, never guessed at."""
    body = strict.load_object(data, what=what, limit=MAX_MANIFEST)
    if body.get("schemaVersion") != 2:
        raise Corrupt(f"{what} is not an OCI image manifest", hint="the remote version is malformed")
    if body.get("artifactType") != VERSION_TYPE:
        raise InvalidArgument(f"{what} is not an imgtool version ({_kind_of(body)})",
                              hint="name a repository that imgtool push wrote")
    layers = body.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise Corrupt(f"{what} has no valid layer list", hint="the remote version is malformed")
    config = Descriptor.from_json(body.get("config"), f"{what} config")
    if config.media_type != CONFIG_TYPE or config.size > MAX_CONFIG:
        raise Corrupt(f"{what} has an unknown or oversized config", hint="upgrade imgtool, or check the remote")
    indexes: list[Descriptor] = []
    packs: dict[str, Descriptor] = {}
    for number, raw in enumerate(layers):
        layer = Descriptor.from_json(raw, f"{what} layer {number}")
        if layer.media_type == INDEX_TYPE and layer.size <= MAX_INDEX:
            indexes.append(layer)
        elif layer.media_type == PACK_TYPE and layer.size <= MAX_PACK:
            packs[layer.digest] = layer
        else:
            raise Corrupt(f"{what} layer {number} has an unknown media type or size",
                          hint="upgrade imgtool, or check the remote")
    notes = body.get("annotations") or {}
    if not isinstance(notes, dict):
        raise Corrupt(f"{what} has malformed annotations", hint="the remote version is malformed")
    return VersionManifest(digest, config, indexes, packs, {str(k): str(v) for k, v in notes.items()})


def _kind_of(body: dict[str, Any]) -> str:
    """What another tool's manifest says it is: its artifact type, else its config's media type."""
    if "artifactType" in body:
        return f"artifact type {str(body['artifactType'])[:80]!r}"
    config = body.get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return f"no artifact type; config type {str(media_type)[:80]!r}"


# -- config ----------------------------------------------------------------------------------------


def config_bytes(version: dict[str, Any], definition: dict[str, Any], gallery: dict[str, Any] | None) -> bytes:
    body = {"format": CONFIG_FORMAT, "kind": "imgtool-version-config", "version": version,
            "definition": definition, "gallery": gallery}
    return canonical_ascii(body)


def parse_config(data: bytes, what: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    body = strict.load_object(data, what=what, limit=MAX_CONFIG, floats=False)  # no float in any record
    if body.get("kind") != "imgtool-version-config":
        raise Corrupt(f"{what} is not an imgtool version config", hint="the remote version is malformed")
    if body.get("format") != CONFIG_FORMAT:
        raise Corrupt(f"{what} has config format {body.get('format')!r}; this imgtool reads {CONFIG_FORMAT}",
                      hint="upgrade imgtool to pull it")
    version, definition, gallery = body.get("version"), body.get("definition"), body.get("gallery")
    if not isinstance(version, dict) or not isinstance(definition, dict) or not (
            gallery is None or isinstance(gallery, dict)):
        raise Corrupt(f"{what} lacks its records", hint="the remote version is malformed")
    return version, definition, gallery


# -- chunk index blobs -----------------------------------------------------------------------------
#
#   b"IMGRIDX1" | virtual size u64 | chunk size u32 | pack count u32 | entry count u32
#   pack count x sha256 (32 bytes raw)
#   entry count x [chunk number u64 | BLAKE3 (32) | pack ordinal u32 | offset u64 | compressed u32 | raw u32]
# all little-endian; entries in chunk-number order; the blob is named by its sha256 in the manifest.

INDEX_MAGIC = b"IMGRIDX1"
_HEAD = struct.Struct("<8sQIII")
_ENTRY = struct.Struct("<Q32sIQII")


@dataclass(frozen=True)
class IndexEntry:
    chunk: int
    blake3: bytes
    pack: str  # sha256:<hex> of the pack blob
    offset: int
    clen: int
    rawlen: int


@dataclass(frozen=True)
class DiskIndex:
    virtual_size: int
    chunk_size: int
    entries: list[IndexEntry]

    def packs(self) -> list[str]:
        return list(dict.fromkeys(e.pack for e in self.entries))


def encode_index(index: DiskIndex) -> bytes:
    packs = index.packs()
    ordinal = {p: i for i, p in enumerate(packs)}
    out = bytearray(_HEAD.pack(INDEX_MAGIC, index.virtual_size, index.chunk_size, len(packs), len(index.entries)))
    for pack in packs:
        out += bytes.fromhex(pack.removeprefix("sha256:"))
    for e in sorted(index.entries, key=lambda e: e.chunk):
        out += _ENTRY.pack(e.chunk, e.blake3, ordinal[e.pack], e.offset, e.clen, e.rawlen)
    return bytes(out)


def decode_index(data: bytes, packs: dict[str, Descriptor], what: str) -> DiskIndex:
    """Parse an index and check every entry against the manifest's packs and the disk's geometry:
    in its pack's bounds, no overlap inside a pack, one entry per chunk, raw length as the disk says."""
    bad = Corrupt(f"{what} is malformed", hint="the remote version is damaged; ask its publisher to push again")
    if len(data) < _HEAD.size:
        raise bad
    magic, vsize, chunk_size, npacks, count = _HEAD.unpack_from(data, 0)
    if magic != INDEX_MAGIC:
        raise Corrupt(f"{what} has an unknown format", hint="upgrade imgtool to pull it")
    if len(data) != _HEAD.size + 32 * npacks + _ENTRY.size * count or not 4096 <= chunk_size <= 1 << 26:
        raise bad
    names = ["sha256:" + data[_HEAD.size + 32 * i:_HEAD.size + 32 * (i + 1)].hex() for i in range(npacks)]
    if any(n not in packs for n in names):
        raise Corrupt(f"{what} points into a pack the manifest does not name", hint="the remote version is damaged")
    base = _HEAD.size + 32 * npacks
    chunks = -(-vsize // chunk_size)
    entries: list[IndexEntry] = []
    spans: dict[str, list[tuple[int, int]]] = {}
    for i in range(count):
        chunk, raw, ordinal, offset, clen, rawlen = _ENTRY.unpack_from(data, base + i * _ENTRY.size)
        if ordinal >= npacks or chunk >= chunks or (entries and chunk <= entries[-1].chunk) or clen == 0:
            raise bad
        if rawlen != min(chunk_size, vsize - chunk * chunk_size) or offset + clen > packs[names[ordinal]].size:
            raise bad
        spans.setdefault(names[ordinal], []).append((offset, clen))
        entries.append(IndexEntry(chunk, raw, names[ordinal], offset, clen, rawlen))
    for listed in spans.values():
        found = sorted(set(listed))  # two chunks may share one frame (identical bytes), never overlap partly
        if any(a[0] + a[1] > b[0] for a, b in itertools.pairwise(found)):
            raise bad
    return DiskIndex(vsize, chunk_size, entries)
