"""Images nested in guest data: capture refuses a disk whose content is itself an image file.

The detectors are those of imgtool.formats.detect, run on the first MiB of guest data as qemu
reads it; a partition table or an ISO there is ordinary content. Integration tests capture real
qcow2 and VMDK files (made by qemu-img from raw guest data) into a real store.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest

from imgtool.capture.disk import capture_file, capture_overlay
from imgtool.errors import UnsafeImage
from imgtool.formats import nested_formats, refuse_nested
from imgtool.home import Home
from imgtool.tools import run
from store.materialize import materialize
from tests.cli import Cli
from tests.conftest import require_tools
from tests.reliability.harness import fingerprint
from tests.test_formats import qemu_img

MIB = 1 << 20
PASSWD_DESCRIPTOR = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                     b'createType="monolithicFlat"\nRW 2048 FLAT "/etc/passwd" 0\n')


def mbr_disk() -> bytes:
    data = bytearray(4096)
    data[446:462] = bytes([0x80, 0, 2, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (100).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def iso_bytes() -> bytes:
    image = pycdlib.PyCdlib()
    image.new(interchange_level=3)
    image.add_fp(io.BytesIO(b"hello\n"), 6, "/HELLO.TXT;1")
    out = io.BytesIO()
    image.write_fp(out)
    image.close()
    return out.getvalue()


@pytest.mark.parametrize(("head", "found"), [
    (b"QFI\xfb\x00\x00\x00\x03" + bytes(504), {"qcow2"}),
    (PASSWD_DESCRIPTOR, {"vmdk"}),
    (b"KDMV\x01" + bytes(507), {"vmdk"}),
    (b"vhdxfile" + bytes(504), {"vhdx"}),
    (b"conectix" + bytes(504), {"vpc"}),
    (b"QED\x00" + bytes(508), {"qed"}),
    (b"LUKS\xba\xbe\x00\x01" + bytes(504), {"luks"}),
    (bytes(64) + (0xBEDA107F).to_bytes(4, "little") + bytes(444), {"vdi"}),
    (bytes(MIB), set()),
    (mbr_disk(), set()),
    (iso_bytes(), set()),
    (b"just some text\n" * 100, set()),
], ids=["qcow2", "vmdk-descriptor", "vmdk-sparse", "vhdx", "vhd", "qed", "luks", "vdi", "zeros", "mbr", "iso",
        "text"])
def test_nested_formats(head: bytes, found: set[str]) -> None:
    assert nested_formats(head) == found


def test_refusal_names_the_disk_the_formats_and_the_override() -> None:
    with pytest.raises(UnsafeImage) as caught:
        refuse_nested(PASSWD_DESCRIPTOR, what="/x/disk.qcow2", outer="qcow2")
    assert caught.value.message.startswith("/x/disk.qcow2: the guest data of this qcow2 disk is itself a vmdk image")
    assert "--allow-nested-image" in caught.value.hint


# --- capture -----------------------------------------------------------------------------------------

def guest_disk(tmp: Path, fmt: str, content: bytes, name: str = "disk") -> Path:
    """A `fmt` image made by qemu-img convert from a 4 MiB raw disk that starts with `content`."""
    raw = tmp / f"{name}.raw"
    raw.write_bytes(content + bytes(4 * MIB - len(content)))
    path = tmp / f"{name}.{fmt}"
    qemu_img("convert", "-q", "-f", "raw", "-O", fmt, raw, path)
    raw.unlink()
    return path


def inner_qcow2(tmp: Path) -> bytes:
    inner = tmp / "inner.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", "/etc/passwd", "-F", "raw", inner, "1M")
    data = inner.read_bytes()
    inner.unlink()
    return data


@pytest.fixture
def home(tmp_path: Path) -> Home:
    require_tools("qemu-img", "qemu-nbd")
    home = Home.at(tmp_path / "home")
    home.ensure()
    assert home.store.config.chunk_size  # opening the store creates it, before any fingerprint is taken
    return home


NESTED: dict[str, tuple[str, Callable[[Path], bytes], str]] = {
    "qcow2-holding-vmdk-descriptor": ("qcow2", lambda t: PASSWD_DESCRIPTOR, "vmdk"),
    "qcow2-holding-qcow2-with-backing": ("qcow2", inner_qcow2, "qcow2"),
    "vmdk-holding-qcow2": ("vmdk", inner_qcow2, "qcow2"),
    "vpc-holding-vmdk-descriptor": ("vpc", lambda t: PASSWD_DESCRIPTOR, "vmdk"),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_image_is_refused_and_nothing_is_stored(name: str, home: Home, tmp_path: Path) -> None:
    outer, content, inner = NESTED[name]
    path = guest_disk(tmp_path, outer, content(tmp_path))
    before = fingerprint(home.root)
    with pytest.raises(UnsafeImage) as caught:
        capture_file(home, path)
    assert f"guest data of this {outer} disk is itself a {inner} image" in caught.value.message
    assert str(path) in caught.value.message
    assert fingerprint(home.root) == before


@pytest.mark.integration
def test_allow_nested_captures_and_records_it(home: Home, tmp_path: Path) -> None:
    path = guest_disk(tmp_path, "qcow2", PASSWD_DESCRIPTOR)
    captured = capture_file(home, path, allow_nested=True)
    assert captured.source["nested_image"] == ["vmdk"]
    restored = tmp_path / "restored.raw"
    store = home.store
    materialize(store, store.get_disk(captured.digest), restored, durable=False)
    assert restored.read_bytes() == PASSWD_DESCRIPTOR + bytes(4 * MIB - len(PASSWD_DESCRIPTOR))


@pytest.mark.integration
@pytest.mark.parametrize("content", ["mbr", "iso", "gpt"])
def test_ordinary_guest_content_is_captured(content: str, home: Home, tmp_path: Path) -> None:
    if content == "gpt":
        require_tools("sfdisk")
        raw = tmp_path / "gpt.raw"
        with raw.open("wb") as f:
            f.truncate(4 * MIB)
        run.run(["sfdisk", "-q", raw], input=b"label: gpt\n,,L\n", timeout=60)
        head = raw.read_bytes()[:64 * 1024]
    else:
        head = mbr_disk() if content == "mbr" else iso_bytes()
    path = guest_disk(tmp_path, "qcow2", head)
    captured = capture_file(home, path)
    assert "nested_image" not in captured.source
    assert captured.virtual_size == 4 * MIB


@pytest.mark.integration
def test_a_vm_overlay_whose_guest_wrote_an_image_header_is_refused(home: Home, tmp_path: Path) -> None:
    """capture_overlay (a VM's disk) runs the same check: the guest chose what its disk holds."""
    base_file = tmp_path / "base.raw"
    base_file.write_bytes(mbr_disk() + bytes(4 * MIB - 4096))
    base = capture_file(home, base_file)
    base_path = tmp_path / "materialized.raw"
    store = home.store
    materialize(store, store.get_disk(base.digest), base_path, durable=False)
    raw_view = tmp_path / "view.raw"  # the base's content with a VMDK descriptor written at its start
    raw_view.write_bytes(PASSWD_DESCRIPTOR + base_path.read_bytes()[len(PASSWD_DESCRIPTOR):])
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", base_path, "-F", "raw", overlay)
    run.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x23 0 {MIB}", overlay], timeout=60)
    source = {"kind": "vm", "vm": "web"}
    # a guest that wrote plain data is captured ...
    captured = capture_overlay(home, overlay, base_digest=base.digest, base_path=base_path, source=source)
    assert "nested_image" not in captured.source
    # ... one that wrote a VMDK descriptor at the start of its disk is not, unless allowed
    nested = tmp_path / "nested.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", "-B", base_path, "-F", "raw", raw_view, nested)
    before = fingerprint(home.root)
    with pytest.raises(UnsafeImage, match="guest data of this VM's disk is itself a vmdk image"):
        capture_overlay(home, nested, base_digest=base.digest, base_path=base_path, source=source)
    assert fingerprint(home.root) == before
    allowed = capture_overlay(home, nested, base_digest=base.digest, base_path=base_path, source=source,
                              allow_nested=True)
    assert allowed.source["nested_image"] == ["vmdk"]


@pytest.mark.integration
def test_the_cli_flag_allows_a_nested_image_and_records_it(tmp_path: Path) -> None:
    """--allow-nested-image is the override the refusal's hint names, on capture and on publish."""
    require_tools("qemu-img")
    inner = tmp_path / "inner.qcow2"
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", inner, "1M"])
    guest = tmp_path / "guest.raw"
    guest.write_bytes(inner.read_bytes().ljust(1 << 20, b"\0"))
    image = tmp_path / "holds-a-qcow2.qcow2"  # a qcow2 whose guest data starts with a qcow2 header
    run.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", guest, image])
    cli = Cli(tmp_path / "home")
    refused = cli("capture", str(image), ok=False)
    assert refused.returncode == 5 and "--allow-nested-image" in refused.stderr
    captured = cli.json("capture", str(image), "--allow-nested-image")
    assert isinstance(captured, dict) and captured["source"]["nested_image"]
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux",
        "--os-state", "generalized")
    # The guest data is an image, no guest OS the audit can read: --allow-unaudited lets the publish reach
    # the nested check, which is what refuses it.
    refused = cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(image), "--allow-unaudited", ok=False)
    assert refused.returncode == 5 and "--allow-nested-image" in refused.stderr
    shown = cli.json("publish", "g/d", "--version", "1.0.0", "--os-disk", str(image), "--allow-unaudited",
                     "--allow-nested-image")
    assert isinstance(shown, dict)
    version = cli.json("version", "show", "g/d@1.0.0")
    assert isinstance(version, dict) and version["disks"][0]["source"]["nested_image"]
