"""version export --format vhd|vmdk through the real command line and real qemu-img: a fixed VHD whose
virtual size is rounded up to a whole MiB (as Azure requires) with an exact footer size, a
streamOptimized VMDK; both read back by qemu-img info and by imgtool's own format readers, and hold
the disk's bytes (qemu-img compare)."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pytest

from imgtool import formats
from imgtool.formats import vpc
from imgtool.gallery import export_formats
from tests.cli import Cli
from tests.conftest import require_tools
from tests.images import MiB
from tests.reliability.harness import random_pieces, write_raw
from tests.test_cli_vm_disks import DEFINE

pytestmark = pytest.mark.integration
ODD = 4 * MiB + 192 * 1024  # not a whole MiB: the VHD must be rounded up


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    require_tools("qemu-img")
    cli = Cli(tmp_path / "home")
    # Random pieces, no guest OS the audit can read: published with --allow-unaudited.
    write_raw(tmp_path / "os.raw", ODD, random_pieces(random.Random(7), ODD, 5))
    cli("gallery", "create", "g")
    cli("definition", "create", "g/d", *DEFINE)
    cli("publish", "g/d", "--version", "1.0.0", "--os-disk", str(tmp_path / "os.raw"), "--allow-unaudited")
    return cli


def qemu_info(path: Path, fmt: str) -> dict[str, object]:
    done = subprocess.run(["qemu-img", "info", "-f", fmt, "--output=json", str(path)], capture_output=True, text=True,
                          check=True)
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


def same_bytes(a: Path, a_fmt: str, b: Path, b_fmt: str) -> bool:
    """qemu-img compare: equal, a larger image's tail reading as zeros (not strict)."""
    done = subprocess.run(["qemu-img", "compare", "-f", a_fmt, "-F", b_fmt, str(a), str(b)],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0


def test_a_fixed_vhd_as_azure_takes_it(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "azure.vhd"
    answer = cli.json("version", "export", "g/d@1.0.0", str(out))
    assert isinstance(answer, dict)
    assert answer["format"] == "vhd" and answer["virtual_size"] == ODD and answer["exported_virtual_size"] == 5 * MiB
    info = qemu_info(out, "vpc")  # a fixed VHD has only a footer: qemu-img's probe alone would say raw
    assert info["format"] == "vpc" and info["virtual-size"] == 5 * MiB
    assert out.stat().st_size == 5 * MiB + vpc.FOOTER_SIZE  # fixed: the data, then one footer
    footer = vpc.Footer.parse(out.read_bytes()[-vpc.FOOTER_SIZE:])
    assert footer.disk_type == vpc.FIXED and footer.current_size == 5 * MiB
    assert vpc.checksum_ok(out.read_bytes()[-vpc.FOOTER_SIZE:], vpc.CHECKSUM_AT)
    seen = formats.inspect(out)
    assert seen.format == "vpc" and seen.virtual_size == 5 * MiB
    assert same_bytes(tmp_path / "os.raw", "raw", out, "vpc")
    # qemu-img's own name for it is accepted too, whatever the file is called
    cli("version", "export", "g/d@1.0.0", str(tmp_path / "disk.bin"), "--format", "vpc")
    assert formats.inspect(tmp_path / "disk.bin").format == "vpc"


def test_a_stream_optimized_vmdk(cli: Cli, tmp_path: Path) -> None:
    out = tmp_path / "vmware.vmdk"
    done = cli("version", "export", "g/d@1.0.0", str(out))
    assert "vmdk" in done.stdout and "rounded" not in done.stdout
    info = qemu_info(out, "vmdk")
    assert info["format"] == "vmdk" and info["virtual-size"] == ODD
    specific = info["format-specific"]
    assert isinstance(specific, dict) and specific["data"]["create-type"] == "streamOptimized"
    seen = formats.inspect(out)
    assert seen.format == "vmdk" and seen.virtual_size == ODD
    assert same_bytes(tmp_path / "os.raw", "raw", out, "vmdk")
    # and it is an image imgtool itself accepts again
    cli("publish", "g/d", "--version", "1.1.0", "--os-disk", str(out), "--allow-unaudited")
    first, second = (cli.json("version", "show", f"g/d@{v}") for v in ("1.0.0", "1.1.0"))
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["disks"][0]["digest"] == second["disks"][0]["digest"]


def test_formats_are_named_not_guessed(cli: Cli, tmp_path: Path) -> None:
    refused = cli("version", "export", "g/d@1.0.0", str(tmp_path / "x.vdi"), ok=False)
    assert refused.returncode == 2 and ".vhd or .vmdk" in refused.stderr
    refused = cli("version", "export", "g/d@1.0.0", str(tmp_path / "x.img"), "--format", "vdi", ok=False)
    assert refused.returncode == 2 and "vhd or vmdk" in refused.stderr
    assert not (tmp_path / "x.img").exists()


def test_the_plan_per_format() -> None:
    vhd = export_formats.choose(Path("a.VHD"), None)
    assert (vhd.qemu_format, vhd.options) == ("vpc", ("subformat=fixed", "force_size=on"))
    assert [vhd.size_of(n) for n in (1, MiB, MiB + 1)] == [MiB, MiB, 2 * MiB]
    assert export_formats.choose(Path("a"), "vmdk").options == ("subformat=streamOptimized",)
    assert export_formats.choose(Path("a.vhd"), "raw").size_of(MiB + 1) == MiB + 1
