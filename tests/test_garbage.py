"""The domain gc plan on hand-built homes (no QEMU): every item with its reason and bytes, what is kept
and how to free it, and execution of exactly that plan."""

from __future__ import annotations

import os
from pathlib import Path

from imgtool import garbage
from imgtool.capture.disk import lease
from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries
from imgtool.gallery.image_versions import PublishRequest
from imgtool.gallery.model import Definition
from imgtool.gallery.version_changes import delete_version
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.vm import bases, boot_profile
from imgtool.vm.record import STREAM, STREAM_LEASES, VmDisk, VmRecord, save
from store import fsclock
from store.ingest import ingest

REF = DefinitionRef("team", "base")
CHUNK = 128 * 1024


def setup_home(tmp_path: Path) -> Home:
    home = Home.at(tmp_path / "home")
    galleries.create_gallery(home, "team")
    galleries.create_definition(home, Definition("team", "base", "acme", "base", "v1", "linux", "generalized"))
    return home  # its disks are random bytes, no guest OS the audit can read: published with allow_unaudited


def store_disk(home: Home, chunks: int) -> str:
    data = os.urandom(chunks * CHUNK)
    with home.store.writing():
        return ingest(home.store, virtual_size=len(data), read=lambda o, n: data[o:o + n],
                      indexes=range(chunks)).digest


def kinds(plan: garbage.GcPlan) -> dict[str, int]:
    return plan.to_json(dry_run=True)["counts"]  # type: ignore[no-any-return]


def test_a_clean_home_plans_nothing(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=store_disk(home, 2), allow_unaudited=True))
    plan = garbage.gc(home, dry_run=True)
    assert plan.items == [] and plan.bytes_freed == 0 and plan.kept == []


def test_a_deleted_version_is_listed_item_by_item_and_freed(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=store_disk(home, 2), allow_unaudited=True))
    publish(home, PublishRequest(REF, Version.parse("2.0.0"), os_disk=store_disk(home, 3), allow_unaudited=True))
    delete_version(home, "team/base@1.0.0", purge=True)  # a soft delete keeps its data (recycle.py)
    plan = garbage.gc(home, dry_run=True)
    assert kinds(plan) == {"manifest": 2, "pack": 1} or kinds(plan) == {"manifest": 2, "repack": 1}
    assert all(item.reason and item.bytes > 0 for item in plan.items)
    assert plan.bytes_freed >= 2 * CHUNK  # random chunks do not compress
    done = garbage.gc(home, dry_run=False)
    assert done.bytes_freed == plan.bytes_freed
    assert garbage.gc(home, dry_run=True).items == []  # converged: the same plan was executed


def test_capture_leases_are_kept_with_a_deadline_then_expire(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    disk = store_disk(home, 1)
    with home.store.writing():
        lease(home.store, disk)
    with home.store.exclusive():
        fresh = garbage.plan(home)
        # A day later by the clock that stamped the lease (the file system's), as gc itself reads it.
        later = garbage.plan(home, now=fsclock.now(home.store.layout.tmp) + 25 * 3600)
    assert [k.kind for k in fresh.kept] == ["capture-lease"] and fresh.items == []
    assert fresh.kept[0].until is not None and "imgtool publish" in fresh.kept[0].hint
    assert {i.kind for i in later.items} == {"capture-lease", "manifest", "pack"} and later.kept == []


def test_bases_without_vms_and_half_written_ones_go_with_reasons(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    disk = store_disk(home, 2)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=disk, allow_unaudited=True))
    base = bases.ensure(home, disk)
    (home.bases / ".tmp-99999999-x.raw").write_bytes(b"x" * 4096)  # a writer pid that cannot be alive
    unfinished = home.vms / "half"
    unfinished.mkdir(parents=True)
    (unfinished / "disk-os.qcow2").write_bytes(b"q" * 8192)
    plan = garbage.gc(home, dry_run=True)
    by_kind = {i.kind: i for i in plan.items}
    assert by_kind["base"].name == base.name and by_kind["base"].bytes > 0
    assert "base-temporary" in by_kind and by_kind["unfinished-vm"].name == "half"
    garbage.gc(home, dry_run=False)
    assert not base.exists() and not unfinished.exists()
    assert garbage.gc(home, dry_run=True).items == []


def test_the_json_plan_is_whole(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=store_disk(home, 1), allow_unaudited=True))
    delete_version(home, "team/base@1.0.0")
    body = garbage.gc(home, dry_run=True).to_json(dry_run=True)
    assert set(body) == {"dry_run", "bytes_freed", "counts", "live_chunks", "dead_chunks", "items", "kept"}
    assert body["bytes_freed"] == sum(i["bytes"] for i in body["items"])
    assert all(set(i) == {"kind", "name", "reason", "bytes"} for i in body["items"])


def test_what_vms_hold_is_kept_and_says_which_vm(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    disk = store_disk(home, 2)
    version = publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=disk, allow_unaudited=True))
    digest = home.store.get_name("versions", "team", "base", "1.0.0")
    assert digest is not None
    base = bases.ensure(home, disk)
    (home.vms / "web1").mkdir(parents=True)
    save(home, VmRecord(name="web1", created="2026-12-01T00:00:00Z", image="team/base@1.0.0", version_digest=digest,
                        os_state="generalized", definition={}, definition_record=version.definition_record, cpus=1,
                        memory_mib=256, firmware="bios", arch="x86_64",
                        disks=(VmDisk(None, "disk-os.qcow2", str(base), disk, 2 * CHUNK),), seed=None))
    home.store.delete_name("versions", "team", "base", "1.0.0")  # as if deleted by an older imgtool
    plan = garbage.gc(home, dry_run=True)
    assert plan.items == []  # the VM pins the record, its disk and its base
    assert {(k.kind, k.hint) for k in plan.kept} == {("version", "imgtool vm delete web1"),
                                                      ("base", "imgtool vm delete web1")}


def test_du_accounts_for_the_whole_home_in_version_order(tmp_path: Path) -> None:
    from imgtool import maintenance

    home = setup_home(tmp_path)
    shared = store_disk(home, 2)
    for number in ("1.10.0", "1.9.0", "1.2.0"):
        publish(home, PublishRequest(REF, Version.parse(number), os_disk=shared, allow_unaudited=True))
    loose = store_disk(home, 1)
    with home.store.writing():
        lease(home.store, loose)
    bases.ensure(home, shared)
    usage = maintenance.du(home)
    assert [r["version"] for r in usage["versions"]] == ["1.2.0", "1.9.0", "1.10.0"]
    assert all(r["unique_bytes"] == 0 and r["stored_bytes"] >= 2 * CHUNK for r in usage["versions"])  # shared
    assert usage["captures"] == {"count": 1, "unpublished_bytes": usage["captures"]["unpublished_bytes"]}
    assert usage["captures"]["unpublished_bytes"] >= CHUNK
    assert usage["bases"]["count"] == 1 and usage["bases"]["bytes"] >= 2 * CHUNK
    assert usage["home_bytes"] >= usage["store_bytes"] + usage["bases"]["bytes"]


def test_the_lease_of_a_published_disk_is_not_reported_as_kept(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    disk = store_disk(home, 1)
    with home.store.writing():
        lease(home.store, disk)
    publish(home, PublishRequest(REF, Version.parse("1.0.0"), os_disk=disk, allow_unaudited=True))
    assert garbage.gc(home, dry_run=True).kept == []  # the version keeps it; the lease adds nothing to say


def test_a_purged_versions_boot_profile_goes_and_a_soft_deleted_ones_stays(tmp_path: Path) -> None:
    home = setup_home(tmp_path)
    digests = {}
    for number in ("1.0.0", "2.0.0"):
        digests[number] = store_disk(home, 2)
        publish(home, PublishRequest(REF, Version.parse(number), os_disk=digests[number], allow_unaudited=True))
        profile = boot_profile.BootProfile(None, (boot_profile.DiskOrder("os", digests[number], (1, 0)),))
        boot_profile.save(home.store, "team", "base", number, profile)
    delete_version(home, "team/base@1.0.0")  # soft: restorable, so its profile must stay
    assert "boot-profile" not in kinds(garbage.gc(home, dry_run=True))
    delete_version(home, "team/base@2.0.0", purge=True)
    plan = garbage.gc(home, dry_run=True)
    assert [(i.kind, i.name) for i in plan.items if i.kind == "boot-profile"] == [("boot-profile", "team/base/2.0.0")]
    garbage.gc(home, dry_run=False)
    assert boot_profile.load(home.store, "team", "base", "2.0.0") is None
    assert boot_profile.load(home.store, "team", "base", "1.0.0") is not None
    assert "boot-profile" not in kinds(garbage.gc(home, dry_run=True))  # converged


def test_a_stream_lease_goes_with_its_vm_and_stays_while_the_vm_is_there(tmp_path: Path) -> None:
    """A streaming VM's leases (stream-leases/<vm>/<disk>) hold what it fetched; once its record is gone (a
    `vm delete` killed after the record and before the leases) nothing else would ever drop them."""
    home = setup_home(tmp_path)
    live, gone = store_disk(home, 2), store_disk(home, 3)
    (home.vms / "live").mkdir(parents=True)
    save(home, VmRecord(name="live", created="2026-12-01T00:00:00Z", image="team/base@1.0.0",
                        version_digest="blake3:" + "0" * 64, os_state="generalized", definition={},
                        definition_record="blake3:" + "1" * 64, cpus=1, memory_mib=256, firmware="bios", arch="x86_64",
                        disks=(VmDisk(None, "disk-os.qcow2", "unused", live, 2 * CHUNK),), seed=None))
    (home.vms / "live" / STREAM).write_text("{}")  # streaming: its leases, not its version, hold its chunks
    home.store.set_name(STREAM_LEASES, "live", "os", target=live)
    home.store.set_name(STREAM_LEASES, "ghost", "os", target=gone)
    plan = garbage.gc(home, dry_run=True)
    assert [(i.kind, i.name) for i in plan.items if i.kind == "stream-lease"] == [("stream-lease", "ghost/os")]
    garbage.gc(home, dry_run=False)
    assert [key for key, _ in home.store.list_names(STREAM_LEASES)] == [("live", "os")]
    assert home.store.has_manifest(live) and not home.store.has_manifest(gone)
    assert kinds(garbage.gc(home, dry_run=True)) == {}  # converged
