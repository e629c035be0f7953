"""qcow2 header checks (QEMU docs/interop/qcow2.txt).

Refused: a backing file (named in the header or hinted by a backing-format
extension), an external data file (feature bit, autoclear bit or header
extension), encryption, the corrupt bit, and any incompatible feature bit this
module does not know. The dirty bit is allowed: it only says refcounts may
have leaked after a crash with lazy_refcounts; qemu repairs that inside the
image, and guest data and other files are not involved.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from imgtool.errors import UnsafeImage

from ._common import FLATTEN_HINT, Source, claims

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # the 72-byte version 2 header
_V3 = struct.Struct(">QQQII")  # features, refcount_order, header_length at offset 72
V2_LENGTH = 72
V3_MIN_LENGTH = 104

DIRTY, CORRUPT, DATA_FILE, COMPRESSION, EXTENDED_L2 = (1 << n for n in range(5))
KNOWN_INCOMPATIBLE = DIRTY | CORRUPT | DATA_FILE | COMPRESSION | EXTENDED_L2
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FULL_DISK_ENCRYPTION = 0x0537BE77
EXT_DATA_FILE = 0x44415441

MAX_L1_BYTES = 32 << 20  # qemu's QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20  # qemu's QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536


@dataclass(frozen=True)
class Header:
    version: int
    backing_offset: int
    backing_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_offset: int
    refcount_offset: int
    refcount_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible: int = 0
    autoclear: int = 0
    header_length: int = V2_LENGTH
    compression_type: int = 0

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits


def check(src: Source) -> int:
    """Validate a qcow2 image; return its virtual size as qemu computes it."""
    header = _read_header(src)
    _refuse_backing(src, header)
    _refuse_features(header)
    _walk_extensions(src, header)
    src.check_virtual_size(header.size)
    _check_tables(src, header)
    return header.size // 512 * 512  # qemu keeps whole sectors only


def _read_header(src: Source) -> Header:
    fields = _V2.unpack(src.read(0, V2_LENGTH, "the qcow2 header"))
    version = fields[1]
    if version == 1:
        raise claims("qcow2", "has header version 1, the legacy qcow format; only versions 2 and 3 are accepted",
                     hint=FLATTEN_HINT)
    if version not in (2, 3):
        raise claims("qcow2", f"has header version {version}; only versions 2 and 3 exist")
    base = Header(version, *fields[2:])
    if not 9 <= base.cluster_bits <= 21:
        raise claims("qcow2", f"has cluster_bits {base.cluster_bits} (qemu allows 9..21)")
    if version == 2:
        return base
    return _read_v3(src, base)


def _read_v3(src: Source, base: Header) -> Header:
    incompatible, _compatible, autoclear, refcount_order, length = _V3.unpack(
        src.read(V2_LENGTH, _V3.size, "the qcow2 version 3 header"))
    if length < V3_MIN_LENGTH or length % 8 or length > base.cluster_size:
        raise claims("qcow2", f"has header_length {length} (must be a multiple of 8, "
                              f"at least {V3_MIN_LENGTH} and at most the cluster size {base.cluster_size})")
    src.require(0, length, "the qcow2 header")
    if refcount_order > 6:
        raise claims("qcow2", f"has refcount_order {refcount_order} (at most 6)")
    compression = src.read(104, 1, "the compression type")[0] if length > 104 else 0
    return replace(base, incompatible=incompatible, autoclear=autoclear,
                   header_length=length, compression_type=compression)


def _refuse_backing(src: Source, header: Header) -> None:
    if header.backing_offset == 0 and header.backing_size == 0:
        return
    name = src.read_padded(header.backing_offset, min(header.backing_size, 1023)).rstrip(b"\0")
    shown = name.decode("utf-8", "backslashreplace") if header.backing_offset and name else "?"
    raise UnsafeImage(
        f"qcow2 image has a backing file {shown!r}: qemu would open that path on this host",
        hint=f"it is an overlay, not a whole image; {FLATTEN_HINT}",
    )


def _refuse_features(header: Header) -> None:
    unknown = header.incompatible & ~KNOWN_INCOMPATIBLE
    if unknown:
        raise UnsafeImage(f"qcow2 image sets unknown incompatible feature bits {unknown:#x}",
                          hint=f"it needs a newer or patched qemu; {FLATTEN_HINT}")
    if header.incompatible & CORRUPT:
        raise UnsafeImage("qcow2 image is marked corrupt (incompatible feature bit 1)",
                          hint="repair it with `qemu-img check -r all` on a trusted machine first")
    if header.incompatible & DATA_FILE or header.autoclear & AUTOCLEAR_DATA_FILE_RAW:
        raise UnsafeImage("qcow2 image has the external data file feature bit set: its guest data "
                          "lives in another file that qemu would open on this host", hint=FLATTEN_HINT)
    if header.crypt_method:
        raise UnsafeImage(f"qcow2 image is encrypted (crypt_method {header.crypt_method})",
                          hint="decrypt it with `qemu-img convert` on a trusted machine first")
    if bool(header.incompatible & COMPRESSION) != (header.compression_type != 0):
        raise claims("qcow2", f"has compression type {header.compression_type} inconsistent with its feature bit")
    if header.compression_type > 1:
        raise claims("qcow2", f"has unknown compression type {header.compression_type}")


def _walk_extensions(src: Source, header: Header) -> None:
    """Walk the header extensions, which qemu reads up to the end of cluster 0."""
    area = src.read_padded(0, header.cluster_size)
    offset = header.header_length
    while offset < len(area):
        if offset + 8 > len(area):
            raise claims("qcow2", "has a header extension that runs past the first cluster")
        kind, length = struct.unpack_from(">II", area, offset)
        if kind == EXT_END:
            return
        data_end = offset + 8 + length
        if data_end > len(area):
            raise claims("qcow2", f"has a header extension {kind:#010x} of {length} bytes "
                                  "that runs past the first cluster")
        _refuse_extension(kind, area[offset + 8:data_end])
        offset += 8 + (length + 7) // 8 * 8


def _refuse_extension(kind: int, data: bytes) -> None:
    if kind == EXT_DATA_FILE:
        name = data.decode("utf-8", "backslashreplace")
        raise UnsafeImage(f"qcow2 image names an external data file {name!r} in a header extension: "
                          "qemu would open that path on this host", hint=FLATTEN_HINT)
    if kind == EXT_BACKING_FORMAT:
        raise UnsafeImage("qcow2 image has a backing-format header extension: it was made as an overlay "
                          "of a backing file", hint=FLATTEN_HINT)
    if kind == EXT_FULL_DISK_ENCRYPTION:
        raise UnsafeImage("qcow2 image has a full-disk-encryption header extension",
                          hint="decrypt it with `qemu-img convert` on a trusted machine first")


def _check_tables(src: Source, header: Header) -> None:
    """The L1, refcount and snapshot tables must be sane and inside the file."""
    cluster = header.cluster_size
    entry_bits = 4 if header.incompatible & EXTENDED_L2 else 3
    span = 1 << (header.cluster_bits * 2 - entry_bits)  # guest bytes one L1 entry maps
    needed = -(-header.size // span)
    if header.l1_size * 8 > MAX_L1_BYTES or header.l1_size < needed:
        raise claims("qcow2", f"has an L1 table of {header.l1_size} entries for a "
                              f"{header.size}-byte disk ({needed} needed, at most {MAX_L1_BYTES // 8})")
    if header.l1_size:
        _table(src, header.l1_offset, header.l1_size * 8, cluster, "the L1 table")
    if header.refcount_clusters == 0 or header.refcount_clusters * cluster > MAX_REFTABLE_BYTES:
        raise claims("qcow2", f"has a refcount table of {header.refcount_clusters} clusters")
    _table(src, header.refcount_offset, header.refcount_clusters * cluster, cluster, "the refcount table")
    if header.nb_snapshots > MAX_SNAPSHOTS:
        raise claims("qcow2", f"lists {header.nb_snapshots} snapshots (qemu allows {MAX_SNAPSHOTS})")
    if header.nb_snapshots:
        _table(src, header.snapshots_offset, 8, cluster, "the snapshot table")


def _table(src: Source, offset: int, length: int, cluster: int, what: str) -> None:
    if offset % cluster:
        raise claims("qcow2", f"has {what} at offset {offset}, not aligned to its {cluster}-byte clusters")
    if offset == 0:
        raise claims("qcow2", f"has {what} on top of the header at offset 0")
    src.require(offset, length, what)
