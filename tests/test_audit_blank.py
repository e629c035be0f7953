"""The audit gate on disks that show no partition table and no file system (issue 19): a disk whose
every byte is zero is "audited: empty" and passes; any other such disk (raw data, an unknown layout)
is "not audited" and refused by a generalized definition unless --allow-unaudited, which is recorded.
Real qemu-img (map, create, qemu-io) and real publishes; the extent check is also tested on its own."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from imgtool.errors import Refused
from imgtool.guest import audit, blank, service
from imgtool.tools.qemu_img import Extent
from tests.cli import Cli
from tests.conftest import require_tools
from tests.images import qemu_io

MiB = 1 << 20
GiB = 1 << 30
EXIT_REFUSED = 5
EXIT_NOT_AUDITED = 9


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    require_tools("qemu-img", "qemu-io", "qemu-storage-daemon", "debugfs")
    cli = Cli(tmp_path / "home")
    cli("gallery", "create", "lab")
    for state in ("generalized", "specialized"):
        cli("definition", "create", f"lab/{state[:4]}", "--publisher", "t", "--offer", "o", "--sku", state,
            "--os-type", "linux", "--os-state", state)
    return cli


def random_disk(path: Path, size: int = 4 * MiB) -> Path:
    path.write_bytes(random.Random(19).randbytes(size))
    return path


def qcow2(path: Path, size: str, *writes: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    if writes:
        qemu_io(path, "qcow2", *writes)
    return path


def assert_refused_unaudited(cli: Cli, source: str, version: str = "1.0.0") -> None:
    refused = cli("publish", "lab/gene", "--version", version, "--os-disk", source, ok=False)
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    assert "could not be audited for machine identity" in refused.stderr
    assert "no file system recognised" in refused.stderr  # why: the disk shows no layout at all
    assert "--allow-unaudited" in refused.stderr and "specialized definition" in refused.stderr  # what to do
    assert "Traceback" not in refused.stderr


def test_raw_data_without_any_layout_is_refused_unless_allowed_and_recorded(cli: Cli, tmp_path: Path) -> None:
    disk = random_disk(tmp_path / "data.raw")
    assert cli("audit", str(disk), ok=False).returncode == EXIT_NOT_AUDITED
    assert_refused_unaudited(cli, str(disk))
    assert cli.json("version", "list", "lab/gene") == []  # nothing published
    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", str(disk), "--allow-unaudited")
    shown = cli.json("version", "show", "lab/gene@1.0.0")
    assert isinstance(shown, dict)
    recorded = shown["audit"]
    assert recorded["audited"] is False and recorded["allowed_unaudited"] is True
    assert recorded["empty"] is False and recorded["clean"] is False and recorded["source"] == str(disk)
    assert "not audited, published with --allow-unaudited" in cli("version", "show", "lab/gene@1.0.0").stdout
    # A specialized definition keeps what it is given: no audit, no override needed.
    cli("publish", "lab/spec", "--version", "1.0.0", "--os-disk", str(disk))


def test_the_same_rule_holds_for_stored_versions_and_vm_disks(cli: Cli, tmp_path: Path) -> None:
    disk = random_disk(tmp_path / "data.raw")
    cli("publish", "lab/spec", "--version", "1.0.0", "--os-disk", str(disk))
    assert_refused_unaudited(cli, "lab/spec@1.0.0")
    digest = cli.json("version", "show", "lab/spec@1.0.0")["disks"][0]["digest"]  # type: ignore[index]
    assert_refused_unaudited(cli, digest)
    cli("vm", "new", "box", "--image", "lab/spec@1.0.0")
    refused = cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", "vm:box", "--os-state",
                  "generalized", ok=False)
    assert refused.returncode == EXIT_REFUSED and "--allow-unaudited" in refused.stderr
    cli("publish", "lab/gene", "--version", "1.0.0", "--os-disk", "vm:box", "--os-state", "generalized",
        "--allow-unaudited")
    assert cli.json("version", "show", "lab/gene@1.0.0")["audit"]["allowed_unaudited"] is True  # type: ignore[index]


def test_an_all_zero_disk_is_audited_empty_and_passes(cli: Cli, tmp_path: Path) -> None:
    sparse = tmp_path / "sparse.raw"
    with open(sparse, "wb") as handle:
        handle.truncate(8 * GiB)  # a hole: qemu-img map knows it is zero, nothing is read
    # Zeros written as data (allocated clusters the map cannot call zero): read, and found zero.
    written = qcow2(tmp_path / "written.qcow2", "1G", "write -P 0 0 1M", "write -P 0 900M 64k", "write -z 2M 1M")
    for version, disk in (("1.0.0", sparse), ("1.0.1", written)):
        body = cli.json("audit", str(disk))
        assert isinstance(body, dict)
        assert body["audited"] is True and body["empty"] is True and body["clean"] is True, body
        assert "audited: empty" in cli("audit", str(disk)).stdout
        cli("publish", "lab/gene", "--version", version, "--os-disk", str(disk))
        recorded = cli.json("version", "show", f"lab/gene@{version}")["audit"]  # type: ignore[index]
        assert recorded["empty"] is True and "allowed_unaudited" not in recorded
        assert "empty (every byte of the disk is zero" in cli("version", "show", f"lab/gene@{version}").stdout


def test_data_at_the_end_of_a_large_sparse_qcow2_is_found(cli: Cli, tmp_path: Path) -> None:
    """The head of the disk is zero and the data lies 64 GiB in: the check reads the data extents,
    wherever they are, not the first bytes (and not the 64 GiB of holes in between)."""
    disk = qcow2(tmp_path / "tail.qcow2", "64G", f"write -P 0x5a {64 * GiB - MiB} 4k")
    assert cli("audit", str(disk), ok=False).returncode == EXIT_NOT_AUDITED
    assert_refused_unaudited(cli, str(disk))
    # One non-zero byte is enough.
    single = qcow2(tmp_path / "byte.qcow2", "16G", f"write -P 0 {8 * GiB} 64k", f"write -P 1 {8 * GiB + 65535} 1")
    assert_refused_unaudited(cli, str(single), "1.0.1")


def test_only_extents_not_known_zero_are_read(tmp_path: Path) -> None:
    view = tmp_path / "view"
    view.write_bytes(bytes(MiB))
    # Extents the map calls zero lie past the view's end here: reading one would fail the check.
    zero = [Extent(0, MiB, data=True, zero=False, depth=0),
            Extent(MiB, 63 * MiB, data=False, zero=True, depth=0),
            Extent(64 * MiB, GiB, data=True, zero=True, depth=0)]
    assert blank.all_zero(view, zero)
    # An extent the map does not call zero is read, even one it says holds no data.
    assert not blank.all_zero(view, [Extent(MiB, MiB, data=False, zero=False, depth=0, present=False)])
    with open(view, "r+b") as handle:
        handle.seek(MiB - 1)
        handle.write(b"\x01")
    assert not blank.all_zero(view, zero)


def test_the_gate_refuses_an_opaque_report_unless_allowed() -> None:
    opaque = audit.Report(False, "no ext2/3/4 root file system found (whole disk: no file system recognised)",
                          opaque=True)
    with pytest.raises(Refused, match="could not be audited") as caught:
        service.gate(opaque, source="data.raw", allow_identity=False)
    assert "--allow-unaudited" in caught.value.hint
    service.gate(opaque, source="data.raw", allow_identity=False, allow_unaudited=True)
    empty = audit.empty_report()
    assert empty.audited and empty.clean and empty.to_json()["empty"] is True
    service.gate(empty, source="zero.raw", allow_identity=False)
