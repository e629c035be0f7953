"""Version lifecycle rules without QEMU: boot-check states and latest, soft delete and restore, retention
and purge, revocation, users. Disks are published from `blake3:` sources (pattern: test_version_index)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from pathlib import Path

import pytest

from imgtool import garbage
from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused, ToolFailed
from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries as gallery
from imgtool.gallery import lookup, recycle, removal, revocation, users
from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.image_versions import PublishRequest, export
from imgtool.gallery.lifecycle_model import BootCheck, CheckResult, DeletedRecord, Revocation, tail
from imgtool.gallery.model import Definition, ImageVersion
from imgtool.gallery.version_changes import delete_version, update_version
from imgtool.gallery.versions import Candidate, resolve_latest
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.vm import checks
from imgtool.vm import lifecycle as vm
from imgtool.vm.record import VmDisk, VmRecord, save
from store.ingest import ingest
from tests.cli import Cli

REF = DefinitionRef("team", "base")
T0 = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


def setup_home(tmp_path: Path, *, boot_check: BootCheck | None = None) -> tuple[Home, str]:
    home = Home.at(tmp_path / "home")
    gallery.create_gallery(home, "team")
    gallery.create_definition(home, Definition("team", "base", "acme", "base", "v1", "linux", "specialized",
                                               boot_check=boot_check))
    return home, new_disk(home)


def new_disk(home: Home) -> str:
    data = os.urandom(256 << 10)
    with home.store.writing():
        return ingest(home.store, virtual_size=len(data), read=lambda o, n: data[o:o + n], indexes=[0, 1]).digest


def put(home: Home, version: str, disk: str) -> ImageVersion:
    return publish(home, PublishRequest(REF, Version.parse(version), os_disk=disk))


def latest(home: Home) -> str | None:
    chosen = lookup.resolve(home, REF)[0]
    return None if chosen is None else str(chosen)


def stand_vm_on(home: Home, name: str, label: str) -> None:
    """A VM receipt standing on a version (what vm new leaves, without making overlays)."""
    version, digest = lookup.get_version(home, label)
    home.ensure()
    (home.vms / name).mkdir()
    save(home, VmRecord(name=name, created="2026-01-01T00:00:00Z", image=label, version_digest=digest,
                        os_state=version.os_state, definition={}, definition_record=version.definition_record,
                        cpus=1, memory_mib=256, firmware="bios", arch="x86_64",
                        disks=(VmDisk(None, "disk-os.qcow2", "/nowhere", version.os_disk.digest,
                                      version.os_disk.virtual_size),), seed=None))


# -- the latest rule (pure) ----------------------------------------------------


def test_latest_skips_pending_failed_and_revoked_and_says_why() -> None:
    candidates = [Candidate(Version(1, 0, 0), False, check="passed"),
                  Candidate(Version(1, 1, 0), False, check="promoted"),
                  Candidate(Version(1, 2, 0), False, check="failed"),
                  Candidate(Version(1, 3, 0), False, check="pending"),
                  Candidate(Version(1, 4, 0), False, revoked="CVE-2026-1"),
                  Candidate(Version(1, 5, 0), True, check="passed")]
    winner, verdicts = resolve_latest(candidates)
    assert winner == Version(1, 1, 0)
    reasons = {str(v.version): v.reason for v in verdicts}
    assert reasons["1.5.0"] == "dropped: excluded from latest"
    assert reasons["1.4.0"] == "dropped: revoked (CVE-2026-1)"
    assert reasons["1.3.0"].startswith("dropped: boot check pending")
    assert reasons["1.2.0"].startswith("dropped: boot check failed")
    assert reasons["1.1.0"].startswith("chosen")
    assert reasons["1.0.0"] == "kept out: 1.1.0 is higher"


def test_boot_check_settings_are_validated() -> None:
    assert BootCheck.parse("console:login: ", 60) == BootCheck("console", "login: ", 60)
    assert BootCheck.parse("ssh").describe() == "ssh"
    for bad in ("console", "console:", "ssh:x", "telnet"):
        with pytest.raises(InvalidArgument):
            BootCheck.parse(bad)
    with pytest.raises(InvalidArgument):
        BootCheck("ssh", None, 0)
    with pytest.raises(InvalidArgument):
        Revocation("  ", "2026-01-01T00:00:00Z")
    assert tail("a\nb\nc\n" * 2000, 100).startswith(("a", "b", "c"))


# -- boot-checked promotion ------------------------------------------------------


def test_a_pending_version_stays_out_of_latest_until_promoted(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path, boot_check=BootCheck("console", "READY", 60))
    put(home, "1.0.0", disk)
    assert lookup.get_version(home, "team/base@1.0.0")[0].check == CheckResult("pending")
    assert latest(home) is None
    update_version(home, "team/base@1.0.0", check=CheckResult("passed", "console:READY", "2026-01-01T00:00:00Z", 5))
    assert latest(home) == "1.0.0"
    put(home, "1.1.0", disk)
    update_version(home, "team/base@1.1.0", check=CheckResult("failed", "console:READY", "2026-01-01T00:00:00Z",
                                                                60000, "no READY", "SeaBIOS\nNo bootable device\n"))
    assert latest(home) == "1.0.0"
    verdict = next(v for v in lookup.resolve(home, REF)[1] if str(v.version) == "1.1.0")
    assert "boot check failed" in verdict.reason
    promoted, warnings = checks.promote(home, "team/base@1.1.0")
    assert len(warnings) == 1 and "failed its boot check" in warnings[0] and "did not boot" in warnings[0]
    assert promoted.check is not None and promoted.check.state == "promoted"
    assert promoted.check.detail is not None and "was: failed" in promoted.check.detail
    assert latest(home) == "1.1.0"
    # The content never changed: same disks, a new record that moved the name.
    assert lookup.get_version(home, "team/base@1.1.0")[0].disks == promoted.disks


def test_a_definition_without_a_boot_check_publishes_eligible_versions_with_unchanged_records(
        tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    published = put(home, "1.0.0", disk)
    assert published.check is None and latest(home) == "1.0.0"
    body = published.to_json()
    assert "check" not in body and "revocation" not in body  # records of before keep their bytes
    definition = gallery.get_definition(home, REF)
    assert "boot_check" not in definition.to_json()
    with pytest.raises(InvalidArgument, match="asks for no boot check"):
        checks.check_version(home, "team/base@1.0.0")


def test_requiring_a_check_later_applies_to_new_versions_only(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    gallery.update_definition(home, REF, boot_check=BootCheck("console", "READY", 120))
    put(home, "1.1.0", disk)
    assert latest(home) == "1.0.0"
    assert gallery.get_definition(home, REF).boot_check == BootCheck("console", "READY", 120)


@pytest.mark.parametrize("kind", ["ssh", "cloud-init"])
def test_a_specialized_definition_refuses_a_check_that_needs_a_provisioned_user(tmp_path: Path, kind: str) -> None:
    home, _disk = setup_home(tmp_path)
    with pytest.raises(InvalidArgument, match="console:TEXT"):
        gallery.update_definition(home, REF, boot_check=BootCheck(kind, None, 120))
    assert gallery.get_definition(home, REF).boot_check is None
    other = Definition("team", "other", "acme", "other", "v1", "linux", "specialized", boot_check=BootCheck(kind))
    with pytest.raises(InvalidArgument, match="specialized definition team/other"):
        gallery.create_definition(home, other)
    gallery.create_definition(home, dataclasses.replace(other, os_state="generalized"))


def test_require_boot_check_on_a_specialized_definition_asks_for_a_console_text(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    cli("gallery", "create", "team")
    define = ["--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux", "--os-state", "specialized"]
    refused = cli("definition", "create", "team/spec", *define, "--require-boot-check", ok=False)
    assert refused.returncode == 2 and "hint: wait for a console line" in refused.stderr
    cli("definition", "create", "team/spec", *define, "--require-boot-check", "--boot-check", "console:login:")


def test_a_damaged_check_field_is_corrupt_not_a_crash(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    body = put(home, "1.0.0", disk).to_json()
    body["check"] = {"state": "maybe"}
    with pytest.raises(Corrupt, match="check"):
        ImageVersion.from_json(body)
    body["check"] = {"state": "passed", "duration_ms": "fast"}
    with pytest.raises(Corrupt, match="duration_ms"):
        ImageVersion.from_json(body)


def test_ssh_check_argv_never_prompts() -> None:
    argv = checks.ssh_check_argv(2222, "imgcheck", Path("/k/id"), ["true"])
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert argv[-3:] == ["imgcheck@127.0.0.1", "--", "true"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == "/k/id"


# -- soft delete and restore ------------------------------------------------------


def test_delete_then_restore_brings_back_the_same_record_and_bytes(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    put(home, "1.1.0", disk)
    before = tmp_path / "before.raw"
    export(home, "team/base@1.1.0", before, fmt="raw")
    _, record = lookup.get_version(home, "team/base@1.1.0")

    kept = delete_version(home, "team/base@1.1.0", now=T0)
    assert kept is not None and kept.purge_after == "2026-01-17T12:00:00Z" and kept.digest == record
    assert [s.version for s in lookup.list_versions(home, REF)] == ["1.0.0"]
    assert latest(home) == "1.0.0"
    with pytest.raises(NotFound) as missing:
        vm.create(home, vm.NewVm(name="v", image="team/base@1.1.0"))
    assert "imgtool version restore team/base@1.1.0" in (missing.value.hint or "")
    assert [i.label for i in recycle.items(home, VERSIONS, "team", "base")] == ["team/base@1.1.0"]

    restored = removal.restore_version(home, "team/base@1.1.0")
    assert lookup.get_version(home, "team/base@1.1.0")[1] == record
    assert restored.version == "1.1.0" and latest(home) == "1.1.0"
    assert recycle.items(home) == []
    after = tmp_path / "after.raw"
    export(home, "team/base@1.1.0", after, fmt="raw")
    assert before.read_bytes() == after.read_bytes()


def test_gc_keeps_a_deleted_version_until_its_retention_ends_then_purge_frees_it(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    delete_version(home, "team/base@1.0.0", now=T0)
    early = garbage.gc(home, dry_run=False, now=(T0 + dt.timedelta(days=1)).timestamp())
    assert home.store.has_manifest(disk)  # the deleted name is a root: nothing freed yet
    assert [(k.kind, k.name, k.until) for k in early.kept] == [
        ("deleted-version", "team/base@1.0.0", "2026-01-17T12:00:00Z")]
    assert "imgtool version restore team/base@1.0.0" in early.kept[0].hint

    assert recycle.expired(home, T0 + dt.timedelta(days=6)) == []
    kept = recycle.kept(home, T0 + dt.timedelta(days=6))
    assert [(i.label, i.purge_after) for i in kept] == [("team/base@1.0.0", "2026-01-17T12:00:00Z")]
    due = recycle.expired(home, T0 + dt.timedelta(days=8))
    assert [i.label for i in due] == ["team/base@1.0.0"] and recycle.kept(home, T0 + dt.timedelta(days=8)) == []
    result = garbage.gc(home, dry_run=False, now=(T0 + dt.timedelta(days=8)).timestamp())  # gc purges it
    assert [i.kind for i in result.items][:1] == ["deleted-version"] and result.bytes_freed > 0
    assert recycle.items(home) == []
    assert not home.store.has_manifest(disk)
    with pytest.raises(NotFound):
        removal.restore_version(home, "team/base@1.0.0")


def test_purge_skips_a_deletion_restored_since_it_was_listed(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    delete_version(home, "team/base@1.0.0", now=T0)
    due = recycle.expired(home, T0 + dt.timedelta(days=8))
    removal.restore_version(home, "team/base@1.0.0")
    with home.store.exclusive():
        assert recycle.purge(home, due) == []
    assert latest(home) == "1.0.0"


def test_delete_with_purge_and_refusals(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    stand_vm_on(home, "web", "team/base@1.0.0")
    with pytest.raises(Refused, match="web"):
        delete_version(home, "team/base@1.0.0")
    vm.delete(home, "web")
    assert delete_version(home, "team/base@1.0.0", purge=True) is None
    assert recycle.items(home) == []
    put(home, "1.0.0", disk)  # the number is free again
    delete_version(home, "team/base@1.0.0", now=T0)
    put(home, "1.0.0", new_disk(home))
    with pytest.raises(AlreadyExists, match="exists again"):
        removal.restore_version(home, "team/base@1.0.0")
    with pytest.raises(Refused, match="already kept"):
        delete_version(home, "team/base@1.0.0")  # a second deleted 1.0.0 would hide the first


def test_definitions_and_galleries_whose_children_are_deleted_move_too(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    with pytest.raises(Refused, match="still has versions"):
        removal.delete_definition(home, REF)
    delete_version(home, "team/base@1.0.0")
    removal.delete_definition(home, REF)
    removal.delete_gallery(home, "team")
    with pytest.raises(NotFound):
        gallery.get_gallery(home, "team")
    with pytest.raises(Refused, match="gallery restore team"):
        removal.restore_definition(home, REF)
    removal.restore_gallery(home, "team")
    with pytest.raises(Refused, match="definition restore team/base"):
        removal.restore_version(home, "team/base@1.0.0")
    assert removal.restore_definition(home, REF).identifier == ("acme", "base", "v1")
    removal.restore_version(home, "team/base@1.0.0")
    assert latest(home) == "1.0.0"
    assert recycle.items(home) == []


def test_purging_a_gallery_purges_what_is_kept_under_it(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    delete_version(home, "team/base@1.0.0")
    removal.delete_definition(home, REF)
    assert len(recycle.items(home)) == 2
    removal.delete_gallery(home, "team", purge=True)
    assert recycle.items(home) == []
    garbage.gc(home, dry_run=False)
    assert not home.store.has_manifest(disk)


# -- revocation and users ------------------------------------------------------------


def test_revoked_versions_leave_latest_are_refused_by_vm_new_and_flag_their_vms(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    put(home, "1.1.0", disk)
    stand_vm_on(home, "web", "team/base@1.1.0")
    stand_vm_on(home, "db", "team/base@1.0.0")
    assert revocation.start_warnings(home, "web") == []
    revoked, vms = revocation.revoke(home, "team/base@1.1.0", "CVE-2026-1234 in openssl", now=T0)
    assert vms == ["web"] and revoked.revocation == Revocation("CVE-2026-1234 in openssl", "2026-01-10T12:00:00Z")
    assert latest(home) == "1.0.0"
    assert [s.revoked for s in lookup.list_versions(home, REF)] == [None, "CVE-2026-1234 in openssl"]
    with pytest.raises(Refused, match="revoked"):
        vm.create(home, vm.NewVm(name="new", image="team/base@1.1.0"))
    assert not (home.vms / "new").exists()
    flags = revocation.vm_flags(home, {"web": "team/base@1.1.0", "db": "team/base@1.0.0"})
    assert list(flags) == ["web"] and flags["web"].reason == "CVE-2026-1234 in openssl"
    assert "revoked: CVE-2026-1234" in revocation.start_warnings(home, "web")[0]
    assert revocation.start_warnings(home, "db") == []


def test_users_lists_vms_and_versions_captured_from_it_transitively(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    publish(home, PublishRequest(REF, Version.parse("1.1.0"), os_disk="team/base@1.0.0"))
    child = lookup.get_version(home, "team/base@1.1.0")[0]
    # A version captured from a VM that stood on 1.1.0 names its parent the way vm capture does.
    grandchild_disk = dataclasses.replace(child.os_disk, source={"kind": "vm", "name": "web",
                                                                  "parent_version": "team/base@1.1.0"})
    grandchild = dataclasses.replace(child, version="1.2.0", disks=(grandchild_disk,))
    with home.store.writing():
        home.store.set_name(VERSIONS, "team", "base", "1.2.0", target=home.store.put_manifest(grandchild.to_json()),
                            create_only=True)
    put(home, "2.0.0", new_disk(home))
    stand_vm_on(home, "web", "team/base@1.1.0")
    stand_vm_on(home, "db", "team/base@1.2.0")
    stand_vm_on(home, "other", "team/base@2.0.0")
    found = users.users(home, "team/base@1.0.0")
    assert found.versions == [{"version": "team/base@1.1.0", "parent": "team/base@1.0.0"},
                              {"version": "team/base@1.2.0", "parent": "team/base@1.1.0"}]
    assert sorted(v["name"] for v in found.vms) == ["db", "web"]
    assert users.users(home, "team/base@2.0.0").versions == []


# -- the command line --------------------------------------------------------------


def test_cli_delete_list_restore_and_purge(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    cli = Cli(home.root)
    cli("publish", "team/base", "--version", "1.0.0", "--os-disk", disk)
    deleted = cli.json("version", "delete", "team/base@1.0.0")
    assert isinstance(deleted, dict) and deleted["purged"] is False and deleted["kept_until"]
    assert cli.json("version", "list", "team/base") == []
    kept = cli.json("version", "list", "team/base", "--deleted")
    assert isinstance(kept, list) and [k["ref"] for k in kept] == ["team/base@1.0.0"]
    missing = cli("version", "show", "team/base@1.0.0", ok=False)
    assert missing.returncode == 3 and "imgtool version restore team/base@1.0.0" in missing.stderr
    cli("definition", "delete", "team/base")
    refused = cli("version", "restore", "team/base@1.0.0", ok=False)
    assert refused.returncode == 5 and "definition restore team/base" in refused.stderr
    cli("definition", "restore", "team/base")
    assert "restored team/base@1.0.0" in cli("version", "restore", "team/base@1.0.0").stdout
    shown = cli.json("version", "show", "team/base@1.0.0")
    assert isinstance(shown, dict) and shown["disks"][0]["digest"] == disk
    cli("version", "delete", "team/base@1.0.0", "--purge")
    cli("definition", "delete", "team/base", "--purge")
    assert "for good" in cli("gallery", "delete", "team", "--purge").stdout
    assert recycle.items(home) == []


def test_cli_definition_boot_check_options(tmp_path: Path) -> None:
    home, _disk = setup_home(tmp_path)
    cli = Cli(home.root)
    bad = cli("definition", "update", "team/base", "--boot-check", "console:READY", ok=False)
    assert bad.returncode == 2 and "--require-boot-check" in bad.stderr
    cli("definition", "update", "team/base", "--require-boot-check", "--boot-check", "console:login:",
        "--boot-timeout", "90")
    shown = cli.json("definition", "show", "team/base")
    assert isinstance(shown, dict) and shown["boot_check"] == {"kind": "console", "text": "login:", "timeout": 90}
    cli("definition", "update", "team/base", "--boot-timeout", "30")
    again = cli.json("definition", "show", "team/base")
    assert isinstance(again, dict) and again["boot_check"]["timeout"] == 30 and again["boot_check"]["text"] == "login:"
    cli("definition", "update", "team/base", "--no-require-boot-check")
    cleared = cli.json("definition", "show", "team/base")
    assert isinstance(cleared, dict) and "boot_check" not in cleared


def test_ssh_checks_retry_until_sshd_answers_or_the_deadline() -> None:
    now = [0.0]
    answers: list[tuple[int, str] | ToolFailed | None] = [
        ToolFailed("ssh timed out", hint=""), (255, "Connection refused\n"), (0, "")]

    def attempt(timeout: float) -> tuple[int, str] | None:
        assert 0 < timeout <= checks.SSH_ATTEMPT_TIMEOUT
        now[0] += 5
        answer = answers.pop(0)
        if isinstance(answer, ToolFailed):
            raise answer
        return answer

    def sleep(seconds: float) -> None:
        now[0] += seconds

    assert checks.retry_ssh(attempt, "true", deadline=100, clock=lambda: now[0], sleep=sleep) is None
    now[0] = 0.0
    answers[:] = [(255, "Permission denied (publickey)")] * 50
    why = checks.retry_ssh(attempt, "true", deadline=30, clock=lambda: now[0], sleep=sleep)
    assert why is not None and "within the timeout" in why and "Permission denied" in why
    answers[:] = [None]
    now[0] = 0.0
    assert checks.retry_ssh(attempt, "true", deadline=30, clock=lambda: now[0], sleep=sleep) == \
        "the VM stopped before ssh answered"


def test_an_interrupted_delete_or_restore_is_finished_by_running_it_again(tmp_path: Path) -> None:
    home, disk = setup_home(tmp_path)
    put(home, "1.0.0", disk)
    _, record = lookup.get_version(home, "team/base@1.0.0")
    key = (VERSIONS, "team", "base", "1.0.0")
    # As if killed after naming the deletion and before removing the live name: both names exist.
    deleted = DeletedRecord("version", "team/base@1.0.0", record, "2026-01-10T12:00:00Z",
                                    "2026-01-17T12:00:00Z")
    with home.store.writing():
        home.store.set_name(recycle.DELETED, *key, target=home.store.put_manifest(deleted.to_json()))
    assert latest(home) == "1.0.0"  # still live: the delete had not happened yet
    kept = delete_version(home, "team/base@1.0.0")
    assert kept is not None and kept.deleted_at == "2026-01-10T12:00:00Z" and latest(home) is None
    # As if killed after re-creating the live name and before removing the deleted one.
    with home.store.writing():
        home.store.set_name(*key, target=record)
    removal.restore_version(home, "team/base@1.0.0")
    assert lookup.get_version(home, "team/base@1.0.0")[1] == record and recycle.items(home) == []


def test_a_console_that_says_the_disk_cannot_boot_ends_an_ssh_check_at_once() -> None:
    assert checks.cannot_boot("Booting from Hard Disk...") is None
    assert checks.cannot_boot("login: ") is None
    for line in ("Boot failed: not a bootable disk", "No bootable device.",
                 "BdsDxe: No bootable option or device was found.", "Kernel panic - not syncing: VFS: Unable"):
        why = checks.cannot_boot(line)
        assert why is not None and line[:20] in why
    tries: list[float] = []

    def attempt(timeout: float) -> tuple[int, str] | None:
        tries.append(timeout)
        raise checks.CannotBoot("its console says the disk cannot boot: 'No bootable device.'", hint="")

    why = checks.retry_ssh(attempt, "true", deadline=600, clock=lambda: 0.0, sleep=lambda s: None)
    assert why == "its console says the disk cannot boot: 'No bootable device.'" and len(tries) == 1
