"""Pure parts of imgtool.guest: partition tables, account edits, the deprovision script, command lines."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest

from imgtool.errors import Corrupt, Refused
from imgtool.guest import audit, fs, generalize, partitions, service
from imgtool.vm.state import RunState

MiB = 1 << 20


def _mbr(entries: list[tuple[int, int, int, bool]], boot_code: bool = True) -> bytearray:
    sector = bytearray(512)
    if boot_code:
        sector[:4] = b"\xeb\x63\x90\x10"
    for i, (kind, start, count, bootable) in enumerate(entries):
        off = 446 + 16 * i
        sector[off] = 0x80 if bootable else 0
        sector[off + 4] = kind
        struct.pack_into("<II", sector, off + 8, start, count)
    sector[510:512] = b"\x55\xaa"
    return sector


def _gpt(parts: list[tuple[str, int, int]], disk_sectors: int) -> bytes:
    mbr = _mbr([(0xEE, 1, disk_sectors - 1, False)], boot_code=False)
    header = bytearray(512)
    header[:8] = b"EFI PART"
    struct.pack_into("<QII", header, 72, 2, 128, 128)
    entries = bytearray(128 * 128)
    for i, (type_guid, first, last) in enumerate(parts):
        entries[i * 128: i * 128 + 16] = uuid.UUID(type_guid).bytes_le
        struct.pack_into("<QQ", entries, i * 128 + 32, first, last)
    return bytes(mbr + header + entries)


def test_mbr_table_with_boot_code_boots_bios() -> None:
    head = bytes(_mbr([(0x83, 2048, 4096, True)])) + bytes(512 * 33)
    table = partitions.read_table(head, None, 8 * MiB)
    assert table.scheme == "mbr"
    assert table.partitions == (partitions.Partition(1, 2048 * 512, 4096 * 512, "0x83", True),)
    assert table.boot_modes() == ("bios",)


def test_mbr_without_boot_code_boots_nothing() -> None:
    head = bytes(_mbr([(0x83, 2048, 4096, False)], boot_code=False)) + bytes(512)
    assert partitions.read_table(head, None, 8 * MiB).boot_modes() == ()


def test_gpt_with_esp_boots_uefi() -> None:
    head = _gpt([(partitions.ESP_GUID, 2048, 4095), (next(iter(partitions.LINUX_GUIDS)), 4096, 16000)], 16384)
    span = partitions.gpt_entry_span(head)
    assert span == (1024, 128 * 128)
    table = partitions.read_table(head, head[span[0]:span[0] + span[1]], 16384 * 512)
    assert table.scheme == "gpt"
    assert [p.number for p in table.partitions] == [1, 2]
    assert table.partitions[0].is_esp
    assert table.partitions[1].start == 4096 * 512
    assert table.boot_modes() == ("uefi",)


def test_partition_past_the_end_is_corrupt() -> None:
    head = bytes(_mbr([(0x83, 2048, 1 << 30, True)])) + bytes(512)
    with pytest.raises(Corrupt, match="past the disk's end"):
        partitions.read_table(head, None, 8 * MiB)


def test_absurd_gpt_header_is_corrupt() -> None:
    head = bytearray(_gpt([(partitions.ESP_GUID, 34, 100)], 16384))
    struct.pack_into("<I", head, 512 + 80, 1 << 20)
    with pytest.raises(Corrupt):
        partitions.gpt_entry_span(bytes(head))


def test_no_signature_is_a_whole_disk_file_system() -> None:
    assert partitions.read_table(bytes(4096), None, 8 * MiB).scheme == "none"


def test_drop_account_removes_user_and_group_membership() -> None:
    passwd = "root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/sh\n"
    group = "sudo:x:27:admin,other\nadmin:x:1000:\nusers:x:100:admin\n"
    assert generalize.drop_account(passwd, "admin", groups=False) == "root:x:0:0:root:/root:/bin/bash\n"
    assert generalize.drop_account(group, "admin", groups=True) == "sudo:x:27:other\nusers:x:100:\n"


def test_online_script_removes_identity_and_powers_off() -> None:
    script = generalize.online_script(None)
    for needle in ("/etc/ssh/ssh_host_*", "/etc/machine-id", "/var/lib/cloud/*", ".bash_history",
                   "/var/lib/dhcp", "/var/log", "systemctl poweroff"):
        assert needle in script
    assert "userdel" not in script
    assert "userdel -f -r alice" in generalize.online_script("alice")


def test_export_argv_is_read_only_unless_writable(tmp_path: Path) -> None:
    argv = fs.export_argv(tmp_path / "a,b.qcow2", "qcow2", tmp_path / "m", tmp_path / "p", writable=False)
    assert argv[0] == "qemu-storage-daemon"
    assert f"filename={tmp_path}/a,,b.qcow2" in argv[2]  # a comma in a path is doubled for QEMU
    assert "read-only=on" in argv[4] and "writable=off" in argv[6]
    assert "--daemonize" not in argv  # our tethered child, so it dies with us (test_run_tether)
    writable = fs.export_argv(tmp_path / "d", "qcow2", tmp_path / "m", tmp_path / "p", writable=True)
    assert "writable=on" in writable[6] and "read-only=off" in writable[4]


def test_unsafe_names_are_not_given_to_debugfs() -> None:
    assert fs.safe("/var/log/syslog")
    assert not fs.safe('/var/log/x"\nrm /etc/passwd')
    assert not fs.safe("/var/log/a\\b")


def _report(*checks: tuple[str, str]) -> audit.Report:
    return audit.Report(True, None, tuple(audit.Finding(c, s, (f"/{c}",), c) for c, s in checks))


def test_gate_refuses_identity_unless_allowed() -> None:
    dirty = _report(("ssh_host_keys", audit.IDENTITY), ("logs", audit.WARNING))
    with pytest.raises(Refused, match="ssh host keys") as caught:
        service.gate(dirty, source="vm:web", allow_identity=False)
    assert "imgtool vm generalize web" in caught.value.hint
    service.gate(dirty, source="vm:web", allow_identity=True)
    service.gate(_report(("logs", audit.WARNING)), source="disk.raw", allow_identity=False)
    assert _report(("logs", audit.WARNING)).clean and not dirty.clean


def test_not_audited_is_never_clean() -> None:
    report = audit.Report(False, "no ext file system")
    assert not report.clean
    assert report.to_json()["clean"] is False


def test_version_record_keeps_its_audit_and_omits_none() -> None:
    from imgtool.gallery.model import Disk, ImageVersion

    disk = Disk(None, "blake3:" + "a" * 64, 1 << 20, {"kind": "file"})
    plain = ImageVersion("g", "d", "1.0.0", "generalized", (disk,), "blake3:" + "b" * 64)
    assert "audit" not in plain.to_json()  # records published before the field existed read the same
    assert ImageVersion.from_json(plain.to_json()).audit is None
    body = {**audit.Report(True).to_json(), "source": "disk.raw", "allowed_identity": False}
    audited = ImageVersion("g", "d", "1.0.0", "generalized", (disk,), "blake3:" + "b" * 64, audit=body)
    assert ImageVersion.from_json(audited.to_json()).audit == body


def test_vm_wait_stops_at_a_changed_host_key_instead_of_retrying(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import time

    from imgtool.errors import ToolFailed
    from imgtool.guest import ssh
    from imgtool.home import Home
    from imgtool.tools import run
    from imgtool.vm.record import SeedInfo, VmDisk, VmRecord, save

    home = Home.at(tmp_path / "home")
    home.ensure()
    (home.vms / "web").mkdir()
    save(home, VmRecord(name="web", created="2026-01-01T00:00:00Z", image="g/d@1.0.0", version_digest="blake3:0",
                        os_state="generalized", definition={}, definition_record="blake3:0", cpus=1, memory_mib=256,
                        firmware="bios", arch="x86_64", disks=(VmDisk(None, "disk-os.qcow2", "/nowhere", "blake3:0",
                                                                       1 << 20),),
                        seed=SeedInfo("seed.iso", "blake3:0", "iid", "web", "me", None)))
    # A live process that looks like the VM's QEMU, so the VM counts as running.
    qemu = subprocess.Popen(["bash", "-c", "exec -a qemu-system-x86_64 sleep 60"])
    try:
        for _ in range(500):  # bounded: until bash has exec'd (a few ms)
            if b"qemu-system" in Path(f"/proc/{qemu.pid}/cmdline").read_bytes():
                break
            time.sleep(0.01)
        (home.vms / "web" / "state.json").write_bytes(RunState(qemu.pid, "tcg", 2222, "q", "t", ()).dumps())
        calls: list[object] = []

        def refused_by_ssh(argv: object, **_: object) -> object:  # the subprocess seam: what ssh says
            calls.append(argv)
            raise ToolFailed("ssh failed (exit 255)", returncode=255,
                             stderr_tail="@@@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @@@\n"
                                         "Host key verification failed.")

        monkeypatch.setattr(run, "run", refused_by_ssh)
        with pytest.raises(Refused, match="host key other than the one remembered") as caught:
            ssh.wait(home, "web", timeout=600)
        assert len(calls) == 1 and "known_hosts" in caught.value.hint
    finally:
        qemu.kill()
        qemu.wait()


@pytest.mark.parametrize(("source", "hint"), [
    ("disk.qcow2", "imgtool generalize disk.qcow2"),
    ("vm:web:os", "imgtool vm generalize web"),
    ("snapshot:web/clean", "imgtool vm snapshot restore web clean, then imgtool vm generalize web"),
    ("team/base@1.0.0", "imgtool vm generalize NAME and use --os-disk vm:NAME"),
    ("blake3:" + "a" * 64, "imgtool generalize FILE"),
])
def test_the_identity_refusal_names_what_generalizes_that_source(source: str, hint: str) -> None:
    report = audit.Report(True, None, (audit.Finding("machine_id", audit.IDENTITY, ("/etc/machine-id",), ""),))
    with pytest.raises(Refused) as caught:
        service.gate(report, source=source, allow_identity=False)
    assert hint in caught.value.hint and "--allow-identity" in caught.value.hint
