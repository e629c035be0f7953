"""Which disks a published version gets: every source kind x every data-disk option (DATA_DISK_RULES).

The plan is checked for VM and snapshot sources from their records alone (no QEMU); digest and
version sources are published for real (their disks are already in the store, nothing is read).
The integration test at the end publishes from a real VM whose overlays qemu-img made.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument, NotFound
from imgtool.flows import publishing
from imgtool.gallery import galleries, image_versions
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import Definition
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.vm.record import VmDisk, VmRecord, save, vm_dir
from store.ingest import ingest

CHUNK = 128 * 1024


def _disk(home: Home, seed: int) -> str:
    """A 1 MiB disk straight into the store (no image file, no qemu-img)."""
    data = random.Random(seed).randbytes(1 << 20)
    with home.store.writing():
        result = ingest(home.store, virtual_size=len(data), read=lambda off, n: data[off:off + n],
                        indexes=range(len(data) // CHUNK))
    return result.digest


@pytest.fixture
def home(tmp_path: Path) -> Home:
    home = Home.at(tmp_path / "home")
    galleries.create_gallery(home, "g")
    galleries.create_definition(home, Definition("g", "d", "p", "o", "s", "linux", "generalized"))
    return home


@pytest.fixture
def disks(home: Home) -> dict[str, str]:
    found = {name: _disk(home, seed) for seed, name in enumerate("ABCDE")}
    publishing.publish_version(home, _req("1.0.0", f"{found['A']}", [(0, found["B"]), (1, found["C"])]))
    return found


def _req(version: str, os_disk: str, data: list[tuple[int, str]] | None = None, **kw: object) -> \
        image_versions.PublishRequest:
    # The disks are random bytes, no guest OS the audit can read: g/d (generalized) takes them with the override.
    kw.setdefault("allow_unaudited", True)
    return image_versions.PublishRequest(ref=DefinitionRef("g", "d"), version=Version.parse(version),
                                         os_disk=os_disk, data_disks=tuple(data or ()), **kw)  # type: ignore[arg-type]


def _vm(home: Home, name: str = "web", luns: tuple[int, ...] = (0, 1)) -> None:
    """A VM record with an OS disk and data disks at `luns` (plan_disks reads only the record)."""
    vm_dir(home, name).mkdir(parents=True)
    disks = [VmDisk(None, "disk-os.qcow2", "/b/os", "blake3:" + "1" * 64, 1 << 20),
             *(VmDisk(lun, f"disk-lun{lun}.qcow2", f"/b/{lun}", "blake3:" + "2" * 64, 1 << 20) for lun in luns)]
    save(home, VmRecord(name=name, created="2026-01-01T00:00:00Z", image="g/d@1.0.0", version_digest="x",
                        os_state="generalized", definition={}, definition_record="y", cpus=1, memory_mib=256,
                        firmware="bios", arch="x86_64", disks=tuple(disks), seed=None))
    (vm_dir(home, name) / "snapshots" / "s1").mkdir(parents=True)


def _plan(home: Home, os_disk: str, data: list[tuple[int, str]] | None = None, **kw: object) -> \
        list[tuple[int | None, str]]:
    return [(p.lun, p.source) for p in image_versions.plan_disks(home, _req("9.0.0", os_disk, data, **kw))]


def _published(home: Home, version: str) -> list[tuple[int | None, str]]:
    v, _ = get_version(home, f"g/d@{version}")
    return [(d.lun, d.digest) for d in v.disks]


# -- OS disk sources without data-disk options ------------------------------------------------


def test_a_digest_or_file_is_one_disk(home: Home, disks: dict[str, str]) -> None:
    assert _plan(home, disks["A"]) == [(None, disks["A"])]
    assert _plan(home, "disk.qcow2") == [(None, "disk.qcow2")]


def test_a_version_brings_its_data_disks(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0"))
    assert _published(home, "2.0.0") == [(None, disks["A"]), (0, disks["B"]), (1, disks["C"])]


def test_a_version_with_os_selector_brings_its_os_disk_alone(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0:os"))
    assert _published(home, "2.0.0") == [(None, disks["A"])]


def test_a_version_lun_as_os_disk_is_that_disk_alone(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0:1"))
    assert _published(home, "2.0.0") == [(None, disks["C"])]


def test_a_vm_brings_all_its_disks(home: Home) -> None:
    _vm(home)
    assert _plan(home, "vm:web") == [(None, "vm:web"), (0, "vm:web:0"), (1, "vm:web:1")]
    assert _plan(home, "snapshot:web/s1") == [(None, "snapshot:web/s1"), (0, "snapshot:web/s1:0"),
                                              (1, "snapshot:web/s1:1")]


def test_a_vm_with_os_selector_brings_its_os_disk_alone(home: Home) -> None:
    _vm(home)
    assert _plan(home, "vm:web:os") == [(None, "vm:web:os")]
    assert _plan(home, "snapshot:web/s1:os") == [(None, "snapshot:web/s1:os")]


# -- data-disk options ---------------------------------------------------------------------------


def test_an_extra_data_disk_at_a_new_lun_is_added(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0", [(2, disks["D"])]))
    assert _published(home, "2.0.0") == [(None, disks["A"]), (0, disks["B"]), (1, disks["C"]), (2, disks["D"])]
    _vm(home)
    assert _plan(home, "vm:web", [(5, "extra.raw")])[-1] == (5, "extra.raw")


@pytest.mark.parametrize("os_disk", ["g/d@1.0.0", "vm:web", "snapshot:web/s1"])
def test_a_data_disk_at_a_lun_the_source_brings_is_refused(home: Home, disks: dict[str, str], os_disk: str) -> None:
    _vm(home)
    with pytest.raises(InvalidArgument, match="already brings a data disk at LUN 1") as caught:
        _plan(home, os_disk, [(1, disks["D"])])
    assert "--replace-data-disks" in caught.value.hint


def test_replace_data_disks_replaces_only_that_lun(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0", [(1, disks["D"])], replace_data_disks=True))
    assert _published(home, "2.0.0") == [(None, disks["A"]), (0, disks["B"]), (1, disks["D"])]
    _vm(home)
    assert _plan(home, "vm:web", [(0, "new.raw")], replace_data_disks=True) == \
        [(None, "vm:web"), (0, "new.raw"), (1, "vm:web:1")]


def test_os_disk_alone_then_data_disks_from_elsewhere(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", "g/d@1.0.0:os", [(1, disks["E"])]))
    assert _published(home, "2.0.0") == [(None, disks["A"]), (1, disks["E"])]


def test_a_multi_disk_data_source_gives_its_disk_at_the_same_lun(home: Home, disks: dict[str, str]) -> None:
    """The wrong result of issue 9: 0=vm:VM took the VM's OS disk. It is the VM's LUN 0."""
    publishing.publish_version(home, _req("2.0.0", disks["E"], [(0, "g/d@1.0.0"), (1, "g/d@1.0.0")]))
    assert _published(home, "2.0.0") == [(None, disks["E"]), (0, disks["B"]), (1, disks["C"])]
    _vm(home)
    assert _plan(home, "os.raw", [(0, "vm:web"), (1, "snapshot:web/s1")]) == \
        [(None, "os.raw"), (0, "vm:web:0"), (1, "snapshot:web/s1:1")]


def test_a_selected_data_disk_or_os_disk_is_taken_as_selected(home: Home, disks: dict[str, str]) -> None:
    publishing.publish_version(home, _req("2.0.0", disks["E"], [(3, "g/d@1.0.0:1"), (4, "g/d@1.0.0:os")]))
    assert _published(home, "2.0.0") == [(None, disks["E"]), (3, disks["C"]), (4, disks["A"])]
    _vm(home)
    assert _plan(home, "os.raw", [(0, "vm:web:1"), (2, "vm:web:os"), (3, "snapshot:web/s1:0")]) == \
        [(None, "os.raw"), (0, "vm:web:1"), (2, "vm:web:os"), (3, "snapshot:web/s1:0")]


@pytest.mark.parametrize("source", ["g/d@1.0.0", "vm:web", "snapshot:web/s1", "g/d@1.0.0:7", "vm:web:7"])
def test_a_data_disk_the_source_lacks_is_not_found_and_nothing_is_stored(home: Home, disks: dict[str, str],
                                                                        source: str) -> None:
    _vm(home)
    with pytest.raises(NotFound, match="has no data disk at LUN 7") as caught:
        publishing.publish_version(home, _req("2.0.0", disks["E"], [(7, source)]))
    assert "0, 1" in caught.value.hint  # names the LUNs it has
    with pytest.raises(NotFound):
        get_version(home, "g/d@2.0.0")


@pytest.mark.parametrize("source", ["vm:web:x", "vm:web:64", "g/d@1.0.0:-1", "snapshot:web/s1:OS"])
def test_a_bad_selector_is_refused_with_the_grammar(home: Home, source: str) -> None:
    _vm(home)
    with pytest.raises(InvalidArgument, match="neither a LUN nor 'os'"):
        _plan(home, source)


def test_the_rules_are_in_publish_help() -> None:
    from tests.cli import Cli

    done = Cli(Path("/nonexistent-home"))("publish", "--help")
    for phrase in ("brings the source's data", "0=vm:web is web's LUN 0", "--replace-data-disks", ":os"):
        assert phrase in " ".join(done.stdout.split()), phrase
