"""imgtool.formats: untrusted images are inspected from their own bytes, before qemu-img sees them."""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from imgtool.errors import ImgtoolError, InvalidArgument, NotFound, UnsafeImage
from imgtool.formats import ACCEPTED_FORMATS, DEFAULT_MAX_VIRTUAL_SIZE, ImageInfo, detect_format, inspect
from imgtool.formats._crc32c import crc32c
from imgtool.tools import run
from tests.conftest import require_tools

REPO = Path(__file__).resolve().parent.parent
HOSTILE = REPO / "fixtures" / "hostile"
SCRIPT = REPO / "scripts" / "make-hostile-fixtures"

# Every committed hostile fixture and a fragment of the message its refusal must carry.
EXPECTED = {
    "qcow2-backing-passwd.qcow2": "backing file '/etc/passwd'",
    "qcow2-backing-passwd-noformat.qcow2": "backing file '/etc/passwd'",
    "qcow2-backing-format-ext.qcow2": "backing-format header extension",
    "qcow2-data-file.qcow2": "external data file feature bit",
    "qcow2-data-file-ext-only.qcow2": "names an external data file 'data.raw'",
    "qcow2-unknown-incompat.qcow2": "unknown incompatible feature bits 0x20",
    "qcow2-unknown-incompat-high.qcow2": "unknown incompatible feature bits 0x8000000000000000",
    "qcow2-corrupt-bit.qcow2": "marked corrupt",
    "qcow2-v1.qcow": "version 1, the legacy qcow format",
    "qcow2-v4.qcow2": "header version 4",
    "qcow2-huge-size.qcow2": "virtual size 16.0 EiB",
    "qcow2-over-limit.qcow2": "exceeds the limit of 4.0 TiB",
    "qcow2-truncated.qcow2": "truncated: the qcow2 header needs bytes 0..72",
    "qcow2-bad-cluster-bits.qcow2": "cluster_bits 30",
    "qcow2-encrypted.qcow2": "encrypted",
    "qcow2-l1-past-eof.qcow2": "truncated: the L1 table",
    "qcow2-ext-overrun.qcow2": "runs past the first cluster",
    "raw-qcow2-magic.img": "claims to be qcow2 but",
    "several-formats.img": "several formats at once (qcow2, vpc)",
    "empty.img": "empty (0 bytes)",
    "qed-backing-passwd.qed": "QED images are refused",
    "luks.img": "LUKS",
    "vdi.vdi": "VDI images are not accepted",
    "parallels.hds": "Parallels images are not accepted",
    "bochs.img": "Bochs images are not accepted",
    "cloop.img": "cloop images are not accepted",
    "dmg-koly.dmg": "DMG images are not accepted",
    "vmdk-desc-monolithicFlat.vmdk": "descriptor file (createType 'monolithicFlat') names other files",
    "vmdk-desc-twoGbMaxExtentSparse.vmdk": "'/etc/passwd', 's002.vmdk'",
    "vmdk-desc-no-banner.vmdk": "VMDK descriptor file",
    "vmdk-sparse-extent-passwd.vmdk": "extent SPARSE '/etc/passwd'",
    "vmdk-sparse-extent-dotdot.vmdk": "extent SPARSE '..'",
    "vmdk-sparse-two-extents.vmdk": "lists 2 extents",
    "vmdk-sparse-createtype-flat.vmdk": "createType 'monolithicFlat' is not accepted",
    "vmdk-sparse-parent-hint.vmdk": "parentFileNameHint",
    "vmdk-sparse-zero-capacity.vmdk": "capacity 0",
    "vmdk-sparse-bad-line.vmdk": "unexpected line 6",
    "vmdk-stream-footer-mismatch.vmdk": "footer disagrees with its header on capacity",
    "vmdk-cowd.vmdk": "COWD",
    "vhd-differencing.vhd": "differencing disk",
    "vhd-dynamic-parent-locator.vhd": "names a parent",
    "vhd-bad-checksum.vhd": "wrong checksum",
    "vhd-fixed-truncated.vhd": "truncated: the fixed disk's data",
    "vhd-old-511-footer.vhd": "511 bytes from the end",
    "vhd-huge.vhd": "vpc virtual size 1.0 PiB",
    "iso-9660.iso": "ISO 9660/UDF images are installation media",
    "iso-qcow2-polyglot.iso": "several formats at once (ISO 9660, qcow2)",
    "qcow2-mbr-polyglot.qcow2": "several formats at once (an MBR/GPT partition table, qcow2)",
    "mbr-bad-boot-flag.img": "boot flag 0x0a",
    "mbr-no-partitions.img": "no partition defined",
    "mbr-protective-hybrid.img": "other partitions beside it (entries 0, 1)",
    "mbr-protective-bad-chs.img": "CHS bytes 00 01 00",
    "mbr-protective-bad-lba.img": "starts at LBA 2",
    "gpt-no-header.img": "no valid GPT header",
    "gpt-bad-header-crc.img": "primary at 512: header CRC32 mismatch",
    "vmdk-sparse-desc-offset.vmdk": "must start at sector 1",
    "vmdk-stream-marker-padding.vmdk": "padding is not all zero",
}


MBR = bytes(446) + bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + struct.pack("<II", 2048, 2048) + bytes(48) + b"\x55\xaa"
FAT_BOOT_SECTOR = b"\xeb\x3c\x90MSDOS5.0" + bytes(5) + b"\x02" + bytes(4) + b"\xf8" + bytes(488) + b"\x55\xaa"


def refusal(path: Path, **kwargs: Any) -> ImgtoolError:
    with pytest.raises(ImgtoolError) as caught:
        inspect(path, **kwargs)
    return caught.value


def test_every_fixture_is_listed_and_documented() -> None:
    files = {p.name for p in HOSTILE.iterdir() if p.name != "README.md"}
    assert files == set(EXPECTED)
    readme = (HOSTILE / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in files)
    # small, except ISOs: their volume descriptor is at 32 KiB
    assert all(p.stat().st_size <= (36864 if p.suffix == ".iso" else 8192) for p in HOSTILE.iterdir())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_hostile_fixture_is_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMGTOOL_MAX_VIRTUAL_SIZE", raising=False)
    error = refusal(HOSTILE / name)
    assert isinstance(error, UnsafeImage)
    assert EXPECTED[name] in error.message
    assert error.message.startswith(f"{HOSTILE / name}: ")
    assert error.hint


def test_hostile_fixtures_are_refused_even_when_the_user_names_their_format() -> None:
    error = refusal(HOSTILE / "qcow2-backing-passwd.qcow2", expected="raw")
    assert isinstance(error, UnsafeImage)


# --- not a regular file ----------------------------------------------------------------------------

def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "image.qcow2"
    os.mkfifo(fifo)
    error = refusal(fifo)
    assert isinstance(error, UnsafeImage)
    assert "is a FIFO" in error.message


def test_symlink_to_a_device_is_refused(tmp_path: Path) -> None:
    link = tmp_path / "disk.raw"
    link.symlink_to("/dev/zero")
    error = refusal(link)
    assert isinstance(error, UnsafeImage)
    assert "character device (via symlink to /dev/zero)" in error.message


def test_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.img"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        error = refusal(path)
    assert isinstance(error, UnsafeImage)
    assert "socket" in error.message


def test_directory_is_an_invalid_argument(tmp_path: Path) -> None:
    error = refusal(tmp_path)
    assert isinstance(error, InvalidArgument)
    assert "directory" in error.message


def test_missing_file_and_dangling_symlink_are_not_found(tmp_path: Path) -> None:
    assert isinstance(refusal(tmp_path / "nope.qcow2"), NotFound)
    dangling = tmp_path / "dangling.img"
    dangling.symlink_to(tmp_path / "gone")
    assert isinstance(refusal(dangling), NotFound)


# --- raw, limits, expected= ------------------------------------------------------------------------

def write_raw(path: Path, size: int) -> Path:
    with path.open("wb") as out:
        out.write(b"\xeb\x63\x90" + bytes(509))  # an MBR-ish first sector: no magic
        out.truncate(size)
    return path


def test_raw_is_accepted_with_its_file_size_through_a_symlink(tmp_path: Path) -> None:
    image = write_raw(tmp_path / "disk.img", 3 * 1024 * 1024)
    link = tmp_path / "link.img"
    link.symlink_to(image)
    assert inspect(link) == ImageInfo(format="raw", virtual_size=3 * 1024 * 1024, path=image)


def test_raw_size_counts_a_ragged_last_sector_like_qemu(tmp_path: Path) -> None:
    assert inspect(write_raw(tmp_path / "disk.img", 4096 + 7)).virtual_size == 4096 + 512


def test_limit_applies_to_raw_and_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    image = write_raw(tmp_path / "disk.img", 1 << 20)
    error = refusal(image, max_virtual_size=1 << 19)
    assert isinstance(error, UnsafeImage)
    assert "exceeds the limit of 512.0 KiB" in error.message
    assert "IMGTOOL_MAX_VIRTUAL_SIZE" in error.hint
    monkeypatch.setenv("IMGTOOL_MAX_VIRTUAL_SIZE", str(1 << 19))
    assert isinstance(refusal(image), UnsafeImage)
    monkeypatch.setenv("IMGTOOL_MAX_VIRTUAL_SIZE", str(1 << 20))
    assert inspect(image).virtual_size == 1 << 20
    monkeypatch.setenv("IMGTOOL_MAX_VIRTUAL_SIZE", "lots")
    assert isinstance(refusal(image), InvalidArgument)
    assert isinstance(refusal(image, max_virtual_size=0), InvalidArgument)


def test_default_limit_is_4_tib() -> None:
    assert DEFAULT_MAX_VIRTUAL_SIZE == 4 << 40


def test_raising_the_limit_lets_the_other_checks_speak(monkeypatch: pytest.MonkeyPatch) -> None:
    """The over-limit qcow2 is otherwise a 1 MiB image: past the limit, its L1 table is too small."""
    monkeypatch.setenv("IMGTOOL_MAX_VIRTUAL_SIZE", str(8 << 40))
    error = refusal(HOSTILE / "qcow2-over-limit.qcow2")
    assert isinstance(error, UnsafeImage)
    assert "L1 table of 32 entries" in error.message


def test_expected_format_mismatch_is_an_invalid_argument(tmp_path: Path) -> None:
    image = write_raw(tmp_path / "disk.qcow2", 1 << 20)
    error = refusal(image, expected="qcow2")
    assert isinstance(error, InvalidArgument)
    assert "the bytes say raw, --format said qcow2" in error.message
    assert inspect(image, expected="raw").format == "raw"
    assert isinstance(refusal(image, expected="qed"), InvalidArgument)


def test_inspect_never_runs_a_subprocess(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"inspect ran a program: {args}")

    monkeypatch.delenv("IMGTOOL_MAX_VIRTUAL_SIZE", raising=False)
    monkeypatch.setattr(run, "run", forbidden)
    monkeypatch.setattr(run, "spawn", forbidden)
    assert inspect(write_raw(tmp_path / "disk.img", 4096)).format == "raw"
    for name in EXPECTED:
        with pytest.raises(UnsafeImage):
            inspect(HOSTILE / name)


# --- detect_format (pure) --------------------------------------------------------------------------

@pytest.mark.parametrize(("header", "size", "tail", "expected"), [
    (b"QFI\xfb\0\0\0\x03", 4096, b"", "qcow2"),
    (b"QED\0", 4096, b"", "qed"),
    (b"KDMV", 4096, b"", "vmdk"),
    (b"# Disk DescriptorFile\n", 100, b"", "vmdk"),
    (b"# made by hand\n   \nversion=1\r\ncreateType=x", 100, b"", "vmdk"),
    (b"vhdxfile", 4096, b"", "vhdx"),
    (b"LUKS\xba\xbe\0\x02", 4096, b"", "luks"),
    (bytes(64) + struct.pack("<I", 0xBEDA107F), 4096, b"", "vdi"),
    (bytes(512), 1024, b"conectix" + bytes(504), "vpc"),
    (bytes(512), 1024, b"\0conectix" + bytes(503), "vpc"),
    (bytes(512), 1024, b"koly" + bytes(508), "dmg"),
    (b"\xeb\x63\x90", 1 << 20, bytes(512), "raw"),
    (b"hello version=1\n", 100, b"", "raw"),
    (MBR, 1 << 20, bytes(512), "raw"),  # a raw disk's own partition table
    (FAT_BOOT_SECTOR, 1 << 20, bytes(512), "raw"),  # a FAT volume is not an MBR (as the peer decides)
    (bytes(32769) + b"CD001\x01", 1 << 20, bytes(512), "iso"),
    (bytes(32769) + b"BEA01\x01", 1 << 20, bytes(512), "iso"),  # UDF
    (bytes(32769) + b"NSR02\x01", 1 << 20, bytes(512), "iso"),
    (MBR + bytes(32769 - 512) + b"CD001\x01", 1 << 20, bytes(512), "iso"),  # hybrid ISO
    (MBR, 1 << 20, b"conectix" + bytes(504), "vpc"),  # a fixed VHD whose guest has an MBR
    (bytes(32769) + b"CD001\x01", 1 << 20, b"conectix" + bytes(504), "vpc"),  # ... or is an ISO
])
def test_detect_format(header: bytes, size: int, tail: bytes, expected: str) -> None:
    assert detect_format(header, size, tail) == expected


@pytest.mark.parametrize(("header", "tail", "listed"), [
    (b"vhdxfile", bytes(512) + b"conectix" + bytes(504), "vhdx, vpc"),
    (b"QFI\xfb" + MBR[4:], bytes(512), "an MBR/GPT partition table, qcow2"),
    (b"QFI\xfb" + bytes(32765) + b"CD001\x01", bytes(512), "ISO 9660, qcow2"),
    (b"LUKS\xba\xbe" + bytes(32763) + b"CD001\x01", bytes(512), "ISO 9660, luks"),
])
def test_detect_format_refuses_several_formats(header: bytes, tail: bytes, listed: str) -> None:
    with pytest.raises(UnsafeImage, match=f"several formats at once \\({listed}\\)"):
        detect_format(header, 1 << 20, tail)


def test_crc32c_known_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283


# --- real images made by qemu-img (integration) ----------------------------------------------------

def qemu_img(*args: str | Path) -> str:
    return run.run(["qemu-img", *args], timeout=60).stdout


def qemu_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    forced = ["-f", fmt] if fmt else []
    info: dict[str, Any] = json.loads(qemu_img("info", "--output=json", *forced, path))
    return info


def make(tmp: Path, fmt: str, *options: str) -> Path:
    path = tmp / f"disk.{fmt}"
    qemu_img("create", "-q", "-f", fmt, *options, path, "64M")
    run.run(["qemu-io", "-f", fmt, "-c", "write -P 0xab 1M 64k", path], timeout=60)
    return path


def convert(tmp: Path, fmt: str, *options: str) -> Path:
    source = make(tmp, "raw")
    path = tmp / f"converted.{fmt}"
    qemu_img("convert", "-f", "raw", "-O", fmt, *options, source, path)
    source.unlink()
    return path


def gd_at_end(tmp: Path) -> Path:
    """qemu's streamOptimized, rewritten the way VMware writes it: grain directory in a footer."""
    path = convert(tmp, "vmdk", "-o", "subformat=streamOptimized")
    data = path.read_bytes()
    data += bytes(-len(data) % 512)
    header = data[:512]
    marker = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0")
    path.write_bytes(header[:56] + b"\xff" * 8 + data[64:] + marker + header + bytes(512))
    return path


GOOD: dict[str, Callable[[Path], Path]] = {
    "qcow2-v2": lambda t: make(t, "qcow2", "-o", "compat=0.10"),
    "qcow2-v3": lambda t: make(t, "qcow2", "-o", "compat=1.1,lazy_refcounts=on"),
    "qcow2-zstd-extended-l2": lambda t: make(t, "qcow2", "-o", "compression_type=zstd,extended_l2=on"),
    "qcow2-compressed": lambda t: convert(t, "qcow2", "-c"),
    "raw": lambda t: make(t, "raw"),
    "raw-ragged-end": lambda t: write_raw(t / "ragged.img", (1 << 20) + 7),
    "vmdk-monolithicSparse": lambda t: make(t, "vmdk"),
    "vmdk-streamOptimized": lambda t: convert(t, "vmdk", "-o", "subformat=streamOptimized"),
    "vmdk-streamOptimized-gd-at-end": gd_at_end,
    "vpc-dynamic": lambda t: make(t, "vpc"),
    "vpc-dynamic-force-size": lambda t: make(t, "vpc", "-o", "force_size=on"),
    "vpc-fixed": lambda t: make(t, "vpc", "-o", "subformat=fixed"),
    "vhdx": lambda t: make(t, "vhdx"),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(GOOD))
def test_good_image_matches_qemu_img_info(kind: str, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    path = GOOD[kind](tmp_path)
    found = inspect(path)
    assert found.format in ACCEPTED_FORMATS
    assert found.path == path.resolve()
    info = qemu_info(path, found.format)
    assert (found.format, found.virtual_size) == (info["format"], info["virtual-size"])
    if kind != "vpc-fixed":  # qemu's probe only sees a VHD footer at offset 0: fixed VHDs probe as raw
        assert qemu_info(path)["format"] == found.format
    assert inspect(path, expected=found.format) == found


@pytest.mark.integration
def test_dirty_qcow2_is_accepted(tmp_path: Path) -> None:
    """Chosen policy: the dirty bit only means leaked refcounts after a crash with lazy_refcounts."""
    require_tools("qemu-img", "qemu-io")
    path = make(tmp_path, "qcow2", "-o", "lazy_refcounts=on")
    data = bytearray(path.read_bytes())
    data[79] |= 1
    path.write_bytes(bytes(data))
    assert qemu_info(path, "qcow2")["format-specific"]["data"].get("corrupt") is False
    assert inspect(path).virtual_size == 64 << 20


@pytest.mark.integration
def test_qcow2_over_an_ordinary_limit(tmp_path: Path) -> None:
    require_tools("qemu-img")
    path = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", path, "5T")
    error = refusal(path)
    assert isinstance(error, UnsafeImage)
    assert "5.0 TiB" in error.message
    assert inspect(path, max_virtual_size=5 << 40).virtual_size == 5 << 40


@pytest.mark.integration
def test_stream_footer_is_what_counts(tmp_path: Path) -> None:
    """qemu takes a GD_AT_END image's geometry from its footer: a footer that grew the disk is refused."""
    require_tools("qemu-img", "qemu-io")
    path = gd_at_end(tmp_path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, len(data) - 1024 + 12, 1 << 40)  # footer capacity, in sectors
    path.write_bytes(bytes(data))
    assert qemu_info(path, "vmdk")["virtual-size"] == 1 << 49
    assert "footer disagrees with its header on capacity" in refusal(path).message


@pytest.mark.integration
def test_vpc_footer_copies_must_agree(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    path = make(tmp_path, "vpc")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the reserved area of the last footer copy only
    path.write_bytes(bytes(data))
    assert "differs from the footer at the end" in refusal(path).message


# VHDX: hostile variants of a real qemu-img image, patched where they would be by an attacker.

def vhdx_metadata(data: bytes) -> int:
    """File offset of the metadata region (second entry of qemu's region table)."""
    return int(struct.unpack_from("<Q", data, 192 * 1024 + 16 + 32 + 16)[0])


def add_parent_locator(data: bytearray) -> None:
    table = vhdx_metadata(bytes(data))
    count = struct.unpack_from("<H", data, table + 10)[0]
    entry = bytes.fromhex("2d5fd3a80bb34d45abf7d3d84834ab0c") + struct.pack("<IIII", 65536 + 4096, 64, 6, 0)
    data[table + 32 + 32 * count:table + 64 + 32 * count] = entry
    struct.pack_into("<H", data, table + 10, count + 1)


def set_has_parent(data: bytearray) -> None:
    table = vhdx_metadata(bytes(data))
    params = table + struct.unpack_from("<I", data, table + 32 + 16)[0]  # qemu lists file parameters first
    struct.pack_into("<I", data, params + 4, 2)


def set_log_pending(data: bytearray) -> None:
    for header in (64 * 1024, 128 * 1024):
        data[header + 48:header + 64] = b"\x01" * 16  # log GUID
        struct.pack_into("<I", data, header + 4, 0)
        struct.pack_into("<I", data, header + 4, crc32c(bytes(data[header:header + 4096])))
    log = struct.unpack_from("<Q", data, 64 * 1024 + 72)[0]
    data[log:log + 4] = b"loge"


def break_region_checksum(data: bytearray) -> None:
    data[192 * 1024 + 100] ^= 1


def grow_virtual_size(data: bytearray) -> None:
    table = vhdx_metadata(bytes(data))
    size_item = table + struct.unpack_from("<I", data, table + 32 + 32 + 16)[0]
    struct.pack_into("<Q", data, size_item, 1 << 50)


VHDX_HOSTILE: dict[str, tuple[Callable[[bytearray], None], str]] = {
    "parent-locator": (add_parent_locator, "parent locator"),
    "has-parent": (set_has_parent, "HasParent"),
    "pending-log": (set_log_pending, "pending log"),
    "region-checksum": (break_region_checksum, "region table with a wrong signature, checksum"),
    "huge": (grow_virtual_size, "vhdx virtual size 1.0 PiB"),
}


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(VHDX_HOSTILE))
def test_hostile_vhdx_is_refused(kind: str, tmp_path: Path) -> None:
    require_tools("qemu-img")
    path = tmp_path / "disk.vhdx"
    qemu_img("create", "-q", "-f", "vhdx", path, "64M")
    data = bytearray(path.read_bytes())
    mutate, fragment = VHDX_HOSTILE[kind]
    mutate(data)
    path.write_bytes(bytes(data))
    error = refusal(path)
    assert isinstance(error, UnsafeImage)
    assert fragment in error.message


@pytest.mark.integration
def test_fixture_script_is_deterministic(tmp_path: Path) -> None:
    require_tools("qemu-img")
    run.run([sys.executable, SCRIPT, tmp_path], timeout=120)
    for committed in HOSTILE.iterdir():
        assert (tmp_path / committed.name).read_bytes() == committed.read_bytes(), committed.name


# --- partition tables of raw disks (real tables made by sfdisk) ----------------------------------

def sfdisk_disk(tmp: Path, label: str, *, sector_size: int = 512) -> Path:
    require_tools("sfdisk")
    path = tmp / f"{label}-{sector_size}.img"
    with path.open("wb") as f:
        f.truncate(16 << 20)
    script = "label: gpt\n,8M,L\n,,L\n" if label == "gpt" else "label: dos\n,8M,83,*\n,,83\n"
    run.run(["sfdisk", "-q", path], input=script.encode(), timeout=60)
    if sector_size == 4096:
        as_4k_sectors(path)
    return path


def as_4k_sectors(path: Path) -> None:
    """Move sfdisk's primary GPT to where a 4096-byte-sector disk has it (header LBA 1, entries LBA 2)."""
    data = bytearray(path.read_bytes())
    header, entries = bytes(data[512:1024]), bytes(data[1024:1024 + 128 * 128])
    data[512:1024 + 128 * 128] = bytes(512 + 128 * 128)
    size = struct.unpack_from("<I", header, 12)[0]
    fixed = bytearray(header[:size])
    struct.pack_into("<IIQ", fixed, 16, 0, 0, 1)  # CRC zeroed, my_lba 1
    struct.pack_into("<Q", fixed, 72, 2)  # entries at LBA 2
    struct.pack_into("<I", fixed, 16, zlib.crc32(bytes(fixed)))
    data[4096:4096 + size] = fixed
    data[8192:8192 + len(entries)] = entries
    data[-512:] = bytes(512)  # the 512-byte-sector backup is no longer valid on a 4K disk
    path.write_bytes(bytes(data))


def edit(path: Path, offset: int, value: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(value)


@pytest.mark.integration
@pytest.mark.parametrize(("label", "sector_size"), [("gpt", 512), ("gpt", 4096), ("dos", 512)])
def test_real_partition_tables_are_raw(label: str, sector_size: int, tmp_path: Path) -> None:
    path = sfdisk_disk(tmp_path, label, sector_size=sector_size)
    assert inspect(path, expected="raw").format == "raw"


@pytest.mark.integration
def test_gpt_with_a_damaged_primary_header_falls_back_to_the_backup_like_linux(tmp_path: Path) -> None:
    path = sfdisk_disk(tmp_path, "gpt")
    edit(path, 512 + 100, b"\xff")  # past the 92-byte header: not covered by its CRC
    assert inspect(path).format == "raw"
    edit(path, 512 + 24, b"\xff")  # my_lba: primary header CRC now fails
    assert inspect(path).format == "raw"  # the backup in the last sector is intact
    edit(path, (16 << 20) - 512 + 24, b"\x00")  # and now the backup too (its my_lba is 0x7fff)
    error = refusal(path)
    assert isinstance(error, UnsafeImage)
    assert "no valid GPT header" in error.message and "backup at" in error.message


@pytest.mark.integration
def test_gpt_entry_array_crc_is_checked(tmp_path: Path) -> None:
    path = sfdisk_disk(tmp_path, "gpt")
    edit(path, 1024 + 56, b"X")  # the first partition's name, in the entry array
    edit(path, (16 << 20) - 33 * 512 + 56, b"X")  # and in the backup array
    error = refusal(path)
    assert "partition entry array CRC32 mismatch" in error.message
