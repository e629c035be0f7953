"""Capture: turn an image source into a disk manifest in the store.

Sources: a disk file (qcow2, raw, vmdk, vpc, vhdx), a digest already in the
store, a version (`G/D@X.Y.Z`), a VM (`vm:NAME`) or a VM snapshot
(`snapshot:NAME/SNAP`). Files from elsewhere are attack surface: they are
inspected by imgtool.formats (pure Python, no subprocess) before qemu-img or
qemu-nbd ever open them, and those then run under resource limits with the
format given explicitly. Only ranges that qemu-img map reports as data are read
(imgtool.diskread: verbatim extents by pread, the rest through qemu-nbd).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool import formats
from imgtool.capture import archives
from imgtool.errors import Corrupt
from imgtool.home import Home
from imgtool.tools import diskread, nbd, qemu_img
from store import digest as digests
from store.ingest import IngestResult, chunk_indexes, ingest
from store.progress import Progress
from store.repo import Store

CAPTURES = "captures"


@dataclass(frozen=True)
class Captured:
    digest: str
    virtual_size: int
    source: dict[str, Any]
    stats: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"digest": self.digest, "virtual_size": self.virtual_size, "source": self.source, **self.stats}


def lease(store: Store, disk_digest: str) -> None:
    """Keep a fresh capture alive until gc's capture retention expires (it is not named yet)."""
    store.set_name(CAPTURES, digests.parse(disk_digest), target=disk_digest)


def _stats(result: IngestResult) -> dict[str, int]:
    return {"chunks_read": result.chunks_read, "chunks_new": result.chunks_new,
            "bytes_read": result.bytes_read, "bytes_stored": result.bytes_stored}


def check_nested(read: Callable[[int, int], bytes | bytearray], virtual_size: int, *, what: str, outer: str,
                 allow_nested: bool) -> list[str]:
    """Refuse a disk whose guest data starts with an image header, unless allowed; return what was found.

    Runs before anything is ingested, so a refusal leaves the store as it was.
    """
    head = bytes(read(0, min(formats.GUEST_PROBE, virtual_size)))
    if not allow_nested:
        formats.refuse_nested(head, what=what, outer=outer)
    return sorted(formats.nested_formats(head))


def capture_file(home: Home, path: Path, *, fmt: str | None = None, progress: Progress | None = None,
                 allow_nested: bool = False) -> Captured:
    """Inspect, map and ingest a disk file. The store is unchanged if anything fails.

    A disk whose guest data is itself an image (imgtool.formats.nested) is
    refused unless `allow_nested`; an allowed nested image is recorded in the
    disk's source as `nested_image` (the formats found).
    """
    info = formats.inspect(Path(path), expected=fmt)
    if info.format == "raw":
        archives.refuse_archive(info.path)  # "raw" only means no image magic: it may be a .gz
    store = home.store
    with store.writing():
        extents = qemu_img.map_extents(info.path, fmt=info.format)
        indexes = chunk_indexes(qemu_img.data_ranges(extents), store.config.chunk_size)
        with diskread.MappedReader(info.path, fmt=info.format, extents=extents, layers={0: info.path},
                                   limits=nbd.limits_for(info.virtual_size)) as mapped:
            if extents and extents[-1].end != info.virtual_size:
                raise Corrupt(f"{path}: qemu-img maps {extents[-1].end} bytes, the header says {info.virtual_size}",
                              hint="the image is inconsistent; refusing to capture it")
            nested = check_nested(mapped.read, info.virtual_size, what=str(path), outer=info.format,
                                  allow_nested=allow_nested)
            result = ingest(store, virtual_size=info.virtual_size, read_into=mapped.readinto, indexes=indexes,
                            progress=progress)
        lease(store, result.digest)
    source: dict[str, Any] = {"kind": "file", "path": str(info.path), "format": info.format,
                              "file_size": info.path.stat().st_size}
    if nested:
        source["nested_image"] = nested
    return Captured(result.digest, info.virtual_size, source, _stats(result))


def capture_overlay(home: Home, overlay: Path, *, base_digest: str, base_path: Path,
                    source: dict[str, Any], progress: Progress | None = None,
                    allow_nested: bool = False) -> Captured:
    """Incremental capture of a VM's qcow2 overlay over a materialized base.

    Only chunks touched by the overlay's own clusters are read; all others keep
    the base disk's chunk digests, so the cost follows the size of the change.
    The overlay is ours, but it is still checked: its backing file must be
    exactly the expected base, with no external data file. The guest wrote its
    disk, so a nested image is refused as for a file (see capture_file).
    """
    store = home.store
    info = qemu_img.info(overlay, fmt="qcow2")
    base = store.get_disk(base_digest)
    # An OS overlay may be larger than its base (vm new --disk-size), never smaller.
    if (info.data_file or Path(info.backing_file or "") != base_path or info.backing_format != "raw"
            or info.virtual_size < base.virtual_size):
        raise Corrupt(f"{overlay} does not stand on {base_path} as expected",
                      hint="the VM's overlay was changed outside imgtool; refusing to capture it")
    size, chunk = info.virtual_size, store.config.chunk_size
    with store.writing():
        extents = qemu_img.map_extents(overlay, fmt="qcow2", limits=None)
        # The overlay's own allocated clusters (depth 0, present), zeroed ones included: they hide base data.
        indexes = set(chunk_indexes(qemu_img.data_ranges(extents, own_only=True), chunk))
        if size != base.virtual_size and base.virtual_size % chunk:
            indexes.add(base.virtual_size // chunk)  # the base's short last chunk is a longer one now
        reused = {i: h for i, h in base.chunks.items() if i not in indexes}
        with diskread.MappedReader(overlay, fmt="qcow2", extents=extents, layers={0: overlay, 1: base_path},
                                   limits=None) as mapped:
            nested = check_nested(mapped.read, size, what=str(overlay), outer="VM's", allow_nested=allow_nested)
            result = ingest(store, virtual_size=size, read_into=mapped.readinto, indexes=sorted(indexes),
                            reused=reused, progress=progress)
        lease(store, result.digest)
    recorded = {**source, "parent_disk": base_digest, **({"nested_image": nested} if nested else {})}
    return Captured(result.digest, size, recorded, _stats(result))
