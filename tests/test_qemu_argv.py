"""QEMU argv as data: many pure cases, plus one check that a real QEMU accepts what we build."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pytest

from imgtool.errors import InvalidArgument
from imgtool.tools import qemu, qmp, run
from imgtool.tools.ports import free_port
from imgtool.tools.qemu import Drive, VmSpec
from tests.conftest import require_tools

VM = Path("/var/lib/imgtool/vms/web1")
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")


def spec(**changes: object) -> VmSpec:
    base = VmSpec(
        name="web1",
        arch="x86_64",
        cpus=2,
        memory_mib=512,
        disks=(Drive(VM / "os.qcow2"),),
        seed=None,
        firmware="bios",
        ovmf_code=None,
        ovmf_vars=None,
        accel="tcg",
        ssh_port=40022,
        qmp_socket=VM / "qmp.sock",
        serial_log=VM / "serial.log",
        pid_file=VM / "qemu.pid",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def uefi(**changes: object) -> VmSpec:
    return spec(firmware="uefi", ovmf_code=OVMF_CODE, ovmf_vars=VM / "OVMF_VARS.fd", **changes)


def values(argv: list[str], option: str) -> list[str]:
    """Every value given to `option`, in order."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == option]


def value(argv: list[str], option: str) -> str:
    found = values(argv, option)
    assert len(found) == 1, f"{option} given {len(found)} times in {argv}"
    return found[0]


# --- shape ------------------------------------------------------------------


def test_binary_per_arch() -> None:
    assert qemu.qemu_binary("x86_64") == "qemu-system-x86_64"
    assert qemu.qemu_binary("aarch64") == "qemu-system-aarch64"
    with pytest.raises(InvalidArgument):
        qemu.qemu_binary("riscv64")


def test_bios_tcg_vm() -> None:
    argv = qemu.build_argv(spec())
    assert argv[0] == "qemu-system-x86_64"
    assert value(argv, "-name") == "guest=web1"
    assert value(argv, "-machine") == "q35,graphics=off"  # SeaBIOS speaks on the serial console
    assert value(argv, "-accel") == "tcg,thread=multi"
    assert value(argv, "-cpu") == "max"
    assert value(argv, "-smp") == "2"
    assert value(argv, "-m") == "512M"
    assert value(argv, "-display") == "none"
    assert value(argv, "-pidfile") == str(VM / "qemu.pid")
    for flag in ("-nodefaults", "-no-user-config", "-daemonize"):
        assert argv.count(flag) == 1
    assert "-no-reboot" not in argv  # a guest reboot should reboot
    assert not any(a.startswith("if=pflash") for a in values(argv, "-drive"))
    assert not any("accel=" in a for a in values(argv, "-machine"))  # QEMU refuses both spellings


def test_kvm_uses_the_host_cpu() -> None:
    argv = qemu.build_argv(spec(accel="kvm"))
    assert value(argv, "-accel") == "kvm"
    assert value(argv, "-cpu") == "host"


def test_foreground_mode_does_not_daemonize() -> None:
    assert "-daemonize" not in qemu.build_argv(spec(), daemonize=False)


def test_serial_and_qmp_go_to_the_vm_files() -> None:
    argv = qemu.build_argv(spec())
    chardevs = values(argv, "-chardev")
    assert f"file,id=serial0,path={VM / 'serial.log'}" in chardevs
    assert f"socket,id=qmp0,path={VM / 'qmp.sock'},server=on,wait=off" in chardevs
    assert value(argv, "-serial") == "chardev:serial0"
    assert value(argv, "-mon") == "chardev=qmp0,mode=control"


def test_ssh_forward_is_loopback_only() -> None:
    argv = qemu.build_argv(spec(ssh_port=41234))
    assert value(argv, "-netdev") == "user,id=n0,hostfwd=tcp:127.0.0.1:41234-:22"
    assert "virtio-net-pci,netdev=n0" in values(argv, "-device")


def test_disks_in_lun_order_then_the_seed() -> None:
    disks = (Drive(VM / "os.qcow2"), Drive(VM / "lun0.qcow2"), Drive(VM / "lun1.raw", format="raw"))
    argv = qemu.build_argv(spec(disks=disks, seed=VM / "seed.iso"))
    assert values(argv, "-drive") == [
        f"file={VM / 'os.qcow2'},if=virtio,format=qcow2,cache=writeback,discard=unmap",
        f"file={VM / 'lun0.qcow2'},if=virtio,format=qcow2,cache=writeback,discard=unmap",
        f"file={VM / 'lun1.raw'},if=virtio,format=raw,cache=writeback,discard=unmap",
        f"file={VM / 'seed.iso'},if=virtio,format=raw,readonly=on",
    ]


def test_readonly_data_disk() -> None:
    argv = qemu.build_argv(spec(disks=(Drive(VM / "os.qcow2"), Drive(VM / "ro.qcow2", readonly=True))))
    assert values(argv, "-drive")[1].endswith(",readonly=on")
    assert not values(argv, "-drive")[0].endswith(",readonly=on")


def test_uefi_pflash_code_readonly_vars_writable_before_disks() -> None:
    drives = values(qemu.build_argv(uefi(seed=VM / "seed.iso")), "-drive")
    assert drives[0] == f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
    assert drives[1] == f"if=pflash,format=raw,unit=1,file={VM / 'OVMF_VARS.fd'}"
    assert drives[2].startswith(f"file={VM / 'os.qcow2'},")
    assert len(drives) == 4


def test_commas_in_paths_are_escaped() -> None:
    odd = Path("/tmp/a,b")
    argv = qemu.build_argv(spec(name="x,y", disks=(Drive(odd / "os.qcow2"),), serial_log=odd / "s.log"))
    assert value(argv, "-name") == "guest=x,,y"
    assert values(argv, "-drive")[0].startswith("file=/tmp/a,,b/os.qcow2,if=virtio")
    assert "file,id=serial0,path=/tmp/a,,b/s.log" in values(argv, "-chardev")
    assert value(argv, "-pidfile") == str(VM / "qemu.pid")  # not an option string: no escaping


def test_aarch64_uses_virt_and_uefi() -> None:
    argv = qemu.build_argv(uefi(arch="aarch64"))
    assert argv[0] == "qemu-system-aarch64"
    assert value(argv, "-machine") == "virt"


def test_rng_device_present() -> None:
    assert "virtio-rng-pci" in values(qemu.build_argv(spec()), "-device")


# --- refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (spec(cpus=0), "cpus"),
        (spec(memory_mib=63), "memory"),
        (spec(arch="mips"), "architecture"),
        (spec(accel="hvf"), "accelerator"),
        (spec(firmware="coreboot"), "firmware"),
        (spec(firmware="uefi", ovmf_code=OVMF_CODE), "uefi"),
        (spec(firmware="uefi", ovmf_vars=VM / "vars.fd"), "uefi"),
        (spec(ovmf_code=OVMF_CODE, ovmf_vars=VM / "vars.fd"), "bios"),
        (spec(arch="aarch64"), "aarch64"),
        (spec(disks=()), "OS disk"),
        (spec(disks=(Drive(VM / "os.vmdk", format="vmdk"),)), "format"),
        (spec(ssh_port=0), "port"),
        (spec(ssh_port=65536), "port"),
        (spec(qmp_socket=Path("/" + "s" * 120)), "socket"),
        (spec(name=""), "name"),
        (spec(name="a\nb"), "name"),
        (spec(serial_log=Path("/tmp/a\nb")), "newline"),
    ],
)
def test_invalid_specs_are_refused(bad: VmSpec, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        qemu.build_argv(bad)
    assert words in str(caught.value)


def test_minimum_values_are_accepted() -> None:
    argv = qemu.build_argv(spec(cpus=1, memory_mib=64, ssh_port=1))
    assert value(argv, "-smp") == "1"
    assert value(argv, "-m") == "64M"


# --- a real QEMU accepts the argv -------------------------------------------


def wait_for(path: Path, guest: run.Background, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert guest.alive(), f"QEMU exited: {guest.stderr()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_qemu_accepts_the_argv(tmp_path: Path, firmware: str) -> None:
    """QEMU parses every option (started paused with -S, so no guest code runs), then quits over QMP."""
    require_tools("qemu-system-x86_64", "qemu-img")
    run.run(["qemu-img", "create", "-q", "-f", "qcow2", tmp_path / "os.qcow2", "64M"])
    run.run(["qemu-img", "create", "-q", "-f", "raw", tmp_path / "data,1.raw", "1M"])
    (tmp_path / "seed.iso").write_bytes(bytes(2048))
    firmware_fields: dict[str, object] = {"firmware": firmware}
    if firmware == "uefi":
        if not OVMF_CODE.exists():
            pytest.skip("OVMF not installed")
        shutil.copy(OVMF_CODE.with_name("OVMF_VARS_4M.fd"), tmp_path / "vars.fd")
        firmware_fields.update(ovmf_code=OVMF_CODE, ovmf_vars=tmp_path / "vars.fd")
    vm = spec(
        disks=(Drive(tmp_path / "os.qcow2"), Drive(tmp_path / "data,1.raw", format="raw")),
        seed=tmp_path / "seed.iso",
        qmp_socket=tmp_path / "qmp.sock",
        serial_log=tmp_path / "serial.log",
        pid_file=tmp_path / "qemu.pid",
        ssh_port=free_port(),  # never connected to; QEMU only binds it
        **firmware_fields,
    )
    guest = run.spawn([*qemu.build_argv(vm, daemonize=False), "-S"])
    try:
        wait_for(tmp_path / "qmp.sock", guest)
        assert qmp.query_status(tmp_path / "qmp.sock") == "prelaunch"
        assert (tmp_path / "qemu.pid").read_text().strip() == str(guest.pid)
        qmp.quit(tmp_path / "qmp.sock")
        deadline = time.monotonic() + 20
        while guest.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not guest.alive()
    finally:
        guest.stop()
