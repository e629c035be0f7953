"""Limits set from what qemu accepts: real files at each boundary, checked with qemu-img compare.

Each image is made by qemu-img with data written by qemu-io, then one header field is edited;
qemu must still read the same content (`qemu-img compare` against the unedited image), and
imgtool must accept it with qemu's virtual size. Past a limit that protects memory, imgtool reads
no more than the limit.
"""

from __future__ import annotations

import shutil
import struct
import uuid
from pathlib import Path

import pytest

from imgtool.formats import inspect, vmdk
from imgtool.formats._common import Source
from imgtool.tools import run
from tests.conftest import require_tools
from tests.test_formats import make, qemu_img, qemu_info

pytestmark = pytest.mark.integration

VDS = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
PHYSICAL = uuid.UUID("CDA348C7-445D-4471-9CC9-E9885251C556").bytes_le


def edited_copy(original: Path, edit: dict[int, bytes]) -> Path:
    path = original.with_name("edited" + original.suffix)
    shutil.copyfile(original, path)
    with path.open("r+b") as f:
        for offset, value in edit.items():
            f.seek(offset)
            f.write(value)
    return path


def same_content(a: Path, b: Path, fmt: str) -> bool:
    done = run.run(["qemu-img", "compare", "-f", fmt, "-F", fmt, a, b], timeout=60, check=False)
    return done.returncode == 0


def assert_read_like_qemu(original: Path, edited: Path, fmt: str) -> None:
    assert same_content(original, edited, fmt), f"qemu-img compare: {edited.name} differs from {original.name}"
    info = inspect(edited)
    assert info.format == fmt
    assert info.virtual_size == qemu_info(edited, fmt)["virtual-size"]


# --- VMDK descriptor size: qemu ignores it for a sparse file; imgtool reads at most 1 MiB - 1 ------

@pytest.mark.parametrize("sectors", [1, 2047, 2048, 2049, 4096, 1 << 32, (1 << 64) - 1])
@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_vmdk_descriptor_size_qemu_ignores(subformat: str, sectors: int, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    original = (make(tmp_path, "vmdk") if subformat == "monolithicSparse"
                else _converted_vmdk(tmp_path, subformat))
    edited = edited_copy(original, {36: struct.pack("<Q", sectors)})
    assert_read_like_qemu(original, edited, "vmdk")


def _converted_vmdk(tmp: Path, subformat: str) -> Path:
    raw = make(tmp, "raw")
    path = tmp / f"{subformat}.vmdk"
    qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}", raw, path)
    return path


def test_vmdk_descriptor_read_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("qemu-img", "qemu-io")
    edited = edited_copy(make(tmp_path, "vmdk"), {36: struct.pack("<Q", 1 << 40)})
    asked: list[int] = []
    real = Source.read_padded

    def spy(self: Source, offset: int, length: int) -> bytes:
        asked.append(length)
        return real(self, offset, length)

    monkeypatch.setattr(Source, "read_padded", spy)
    assert inspect(edited).format == "vmdk"
    assert max(asked) <= vmdk.MAX_DESCRIPTOR_BYTES + 1


def test_vmdk_descriptor_elsewhere_is_refused(tmp_path: Path) -> None:
    """The peer's rule: qemu reads the descriptor at sector 1, so it must be there."""
    require_tools("qemu-img", "qemu-io")
    edited = edited_copy(make(tmp_path, "vmdk"), {28: struct.pack("<Q", 3)})
    with pytest.raises(Exception, match="must start at sector 1"):
        inspect(edited)


# --- VHDX metadata items: qemu reads fixed sizes and never checks a declared length ----------------

def _metadata_entry(data: bytes, guid: bytes) -> int:
    """File offset of the metadata table entry for `guid`."""
    region = struct.unpack_from("<Q", data, 192 * 1024 + 16 + 32 + 16)[0]
    assert data[192 * 1024 + 16 + 32:192 * 1024 + 16 + 48] == uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    for n in range(struct.unpack_from("<H", data, region + 10)[0]):
        entry = region + 32 + 32 * n
        if data[entry:entry + 16] == guid:
            return int(entry)
    raise AssertionError("metadata item not found")


@pytest.mark.parametrize("guid", [VDS, FILE_PARAMETERS, PHYSICAL], ids=["size", "parameters", "physical"])
@pytest.mark.parametrize("length", [0, 1, 7, 9, 4096, 33 * 2048, 0xFFFFFFFF])
def test_vhdx_item_lengths_qemu_opens(guid: bytes, length: int, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    original = make(tmp_path, "vhdx")
    entry = _metadata_entry(original.read_bytes(), guid)
    edited = edited_copy(original, {entry + 20: struct.pack("<I", length)})
    assert_read_like_qemu(original, edited, "vhdx")


def _item_offset(path: Path, guid: bytes) -> int:
    data = path.read_bytes()
    region = struct.unpack_from("<Q", data, 192 * 1024 + 16 + 32 + 16)[0]
    return int(region + struct.unpack_from("<I", data, _metadata_entry(data, guid) + 16)[0])


@pytest.mark.parametrize("physical", [512, 1024, 4096, 65536])
def test_vhdx_physical_sector_size_is_not_checked_by_qemu(physical: int, tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    original = make(tmp_path, "vhdx")
    edited = edited_copy(original, {_item_offset(original, PHYSICAL): struct.pack("<I", physical)})
    assert_read_like_qemu(original, edited, "vhdx")


def test_vhdx_ragged_virtual_size_is_cut_to_sectors_like_qemu(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    original = make(tmp_path, "vhdx")
    edited = edited_copy(original, {_item_offset(original, VDS): struct.pack("<Q", (64 << 20) + 100)})
    assert_read_like_qemu(original, edited, "vhdx")
    assert inspect(edited).virtual_size == 64 << 20


def test_vhdx_item_past_the_end_of_the_file_is_refused(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-io")
    original = make(tmp_path, "vhdx")
    entry = _metadata_entry(original.read_bytes(), VDS)
    edited = edited_copy(original, {entry + 16: struct.pack("<I", 0xFFFFFFF0)})
    with pytest.raises(Exception, match="truncated"):
        inspect(edited)
