"""VMDK checks: one self-contained sparse file, or nothing.

Accepted: a hosted sparse extent (magic KDMV) whose embedded descriptor says
createType monolithicSparse or streamOptimized and lists exactly one extent,
itself. Refused: text descriptor files (their extents are other files: qemu
would open whatever paths they name), ESX "COWD" sparse files, a zero capacity
(qemu then follows the embedded descriptor's extents), parent hints, a
descriptor anywhere but sector 1 (where qemu reads it, whatever the header
says), and a streamOptimized footer that disagrees with its header or whose
markers are not exactly a marker (size 0, its type, zero padding) -- the peer's
checks. The header's descriptor size is not a limit qemu has; at most
MAX_DESCRIPTOR_BYTES of it are read, as qemu does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, fields

from imgtool.errors import UnsafeImage

from . import _vmdk_descriptor as descriptor
from ._common import FLATTEN_HINT, Source, claims

_HEADER = struct.Struct("<4sIIQQQQIQQQ5sH")  # 79 bytes of the 512-byte sparse header
_MARKER = struct.Struct("<QII")  # value, size, type
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_RGD = 1 << 1
COMPRESSION_DEFLATE = 1
MARKER_END_OF_STREAM = 0
MARKER_FOOTER = 3
QEMU_DESC_OFFSET = 0x200  # qemu looks for parentFileNameHint here, whatever the header says
QEMU_DESC_SIZE = 20 * 512
# qemu reads at most 1 MiB - 1 of descriptor text (vmdk_read_desc) and never looks at the header's
# descriptor size for a sparse file, so any size is accepted and only this much is read.
MAX_DESCRIPTOR_BYTES = (1 << 20) - 1
MARKER_PADDING = bytes(496)
MAX_GRAIN_SECTORS = 0x200000
MAX_GTES = 512
MAX_L1_ENTRIES = 32 << 20
ACCEPTED_CREATE_TYPES = ("monolithicSparse", "streamOptimized")
SINGLE_FILE_HINT = f"export it as a single monolithicSparse or streamOptimized .vmdk, or {FLATTEN_HINT}"


@dataclass(frozen=True)
class SparseHeader:
    version: int
    flags: int
    capacity: int
    granularity: int
    desc_offset: int
    desc_size: int
    num_gtes: int
    rgd_offset: int
    gd_offset: int
    grain_offset: int
    compress: int

    @classmethod
    def parse(cls, sector: bytes) -> SparseHeader:
        v = _HEADER.unpack_from(sector)
        return cls(version=v[1], flags=v[2], capacity=v[3], granularity=v[4], desc_offset=v[5],
                   desc_size=v[6], num_gtes=v[7], rgd_offset=v[8], gd_offset=v[9], grain_offset=v[10],
                   compress=v[12])


def check(src: Source) -> int:
    """Validate a VMDK file; return its virtual size (capacity in bytes)."""
    magic = src.read(0, 4, "the VMDK magic")
    if magic == b"COWD":
        raise UnsafeImage("VMDK file is an ESX 'COWD' (vmfsSparse) extent, which is not accepted",
                          hint=SINGLE_FILE_HINT)
    if magic != b"KDMV":
        _refuse_descriptor_file(src)
    header = SparseHeader.parse(src.read(0, 512, "the VMDK sparse header"))
    if header.version not in (1, 2, 3):
        raise claims("vmdk", f"has sparse header version {header.version} (qemu reads 1..3)")
    if header.capacity == 0:
        raise UnsafeImage("VMDK sparse header has capacity 0: qemu would then open the extents its "
                          "descriptor names, which may be any file on this host", hint=SINGLE_FILE_HINT)
    if header.gd_offset == GD_AT_END:
        header = _footer(src, header)
    _check_descriptor(src, header)
    size = header.capacity * 512
    src.check_virtual_size(size)
    _check_tables(src, header)
    return size


def _refuse_descriptor_file(src: Source) -> None:
    text = src.read_padded(0, min(src.size, 1 << 20)).split(b"\0", 1)[0]
    names = ", ".join(repr(n) for n in descriptor.extent_names(text)) or "none readable"
    raise UnsafeImage(
        f"VMDK descriptor file (createType {descriptor.create_type(text)!r}) names other files as its "
        f"extents ({names}); descriptor files are refused because qemu would open those paths on this host",
        hint=SINGLE_FILE_HINT,
    )


def _footer(src: Source, header: SparseHeader) -> SparseHeader:
    """streamOptimized with the grain directory at the end: qemu trusts the footer, so it must agree."""
    if src.size < 1536 + 512:
        raise src.truncated(src.size - 1536, 1536, "the streamOptimized footer")
    end = src.read(src.size - 1536, 1536, "the streamOptimized footer")
    footer_marker, eos_marker = _MARKER.unpack_from(end, 0), _MARKER.unpack_from(end, 1024)
    if end[512:516] != b"KDMV" or footer_marker[1:] != (0, MARKER_FOOTER) or eos_marker != (0, 0,
                                                                                             MARKER_END_OF_STREAM):
        raise claims("vmdk", "says its grain directory is at the end, and has no valid footer there")
    if end[16:512] != MARKER_PADDING or end[1024 + 16:] != MARKER_PADDING:
        # as the peer: bytes hidden in a marker's padding are no part of any VMDK qemu or VMware writes
        raise claims("vmdk", "has a footer or end-of-stream marker whose padding is not all zero")
    footer = SparseHeader.parse(end[512:1024])
    differing = [f.name for f in fields(SparseHeader)
                 if f.name != "gd_offset" and getattr(footer, f.name) != getattr(header, f.name)]
    if differing:
        raise UnsafeImage(
            f"VMDK streamOptimized footer disagrees with its header on {', '.join(differing)}: "
            "qemu would use the footer's values", hint=SINGLE_FILE_HINT)
    if footer.gd_offset == GD_AT_END:
        raise claims("vmdk", "has a footer that also puts the grain directory at the end")
    return footer


def _check_descriptor(src: Source, header: SparseHeader) -> None:
    if header.desc_offset * 512 != QEMU_DESC_OFFSET or header.desc_size == 0:
        # qemu reads the descriptor (CID, parent hint) at 0x200 whatever the header says: one place only
        raise claims("vmdk", f"has its embedded descriptor at sector {header.desc_offset} with "
                             f"{header.desc_size} sectors (the descriptor must start at sector 1)")
    length = min(header.desc_size * 512, MAX_DESCRIPTOR_BYTES)
    src.require(QEMU_DESC_OFFSET, min(length, 512), "the embedded descriptor")
    raw = src.read_padded(QEMU_DESC_OFFSET, length)
    text = raw.split(b"\0", 1)[0]
    qemu_view = src.read_padded(QEMU_DESC_OFFSET, QEMU_DESC_SIZE).split(b"\0", 1)[0]
    if b"parentFileNameHint" in text or b"parentFileNameHint" in qemu_view:
        raise UnsafeImage("VMDK descriptor has a parentFileNameHint: qemu would open that parent file "
                          "as a backing file on this host", hint=SINGLE_FILE_HINT)
    try:
        parsed = descriptor.parse(text)
    except descriptor.DescriptorError as exc:
        raise claims("vmdk", f"has an embedded descriptor that {exc}") from None
    _check_policy(parsed, header)


def _check_policy(parsed: descriptor.Descriptor, header: SparseHeader) -> None:
    create_type = parsed.entries.get("createType")
    if create_type not in ACCEPTED_CREATE_TYPES:
        raise UnsafeImage(f"VMDK createType {create_type!r} is not accepted (only "
                          f"{' or '.join(ACCEPTED_CREATE_TYPES)})", hint=SINGLE_FILE_HINT)
    streamed = header.compress == COMPRESSION_DEFLATE
    if header.compress not in (0, COMPRESSION_DEFLATE) or streamed != (create_type == "streamOptimized"):
        raise claims("vmdk", f"says createType {create_type} with compression {header.compress}")
    parent = parsed.entries.get("parentCID", "ffffffff")
    if parent.lower() != "ffffffff":
        raise UnsafeImage(f"VMDK descriptor has parentCID={parent}: it is a delta disk of a parent image",
                          hint=SINGLE_FILE_HINT)
    if len(parsed.extents) != 1:
        raise UnsafeImage(f"VMDK descriptor lists {len(parsed.extents)} extents; exactly one extent "
                          "(the file itself) is accepted", hint=SINGLE_FILE_HINT)
    extent = parsed.extents[0]
    name = extent.filename
    if extent.kind != "SPARSE" or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UnsafeImage(f"VMDK extent {extent.kind} {name!r} could refer to another file on this host "
                          "(only a SPARSE extent with a plain file name, no '/' or '..', is accepted)",
                          hint=SINGLE_FILE_HINT)


def _check_tables(src: Source, header: SparseHeader) -> None:
    """Geometry within qemu's bounds, and the grain directories inside the file."""
    if not 0 < header.num_gtes <= MAX_GTES or not 0 < header.granularity <= MAX_GRAIN_SECTORS:
        raise claims("vmdk", f"has {header.num_gtes} grain table entries of {header.granularity} sectors")
    span = header.num_gtes * header.granularity
    directory_entries = -(-header.capacity // span)
    if directory_entries > MAX_L1_ENTRIES:
        raise claims("vmdk", f"needs a grain directory of {directory_entries} entries")
    src.require(0, header.grain_offset * 512, "the metadata before the first grain")
    src.require(header.gd_offset * 512, directory_entries * 4, "the grain directory")
    if header.flags & FLAG_RGD and header.rgd_offset:
        src.require(header.rgd_offset * 512, directory_entries * 4, "the redundant grain directory")
