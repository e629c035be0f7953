"""Warm starts without QEMU: argv, device sets, the warm record, the fit check, the agent protocol, gc's view."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from imgtool.errors import Corrupt, InvalidArgument, Refused, ToolFailed
from imgtool.home import Home
from imgtool.tools import migration, qemu
from imgtool.vm import lifecycle as vm
from imgtool.vm import seed, warm_agent, warm_new, warm_state
from imgtool.vm.warm_state import Facts, WarmDisk, WarmRecord
from tests.cli import Cli


def spec(tmp_path: Path, *, warm: qemu.Warm | None = None, seed_iso: bool = True) -> qemu.VmSpec:
    return qemu.VmSpec(name="w", arch="x86_64", cpus=1, memory_mib=256, disks=(qemu.Drive(tmp_path / "os.qcow2"),),
                       seed=tmp_path / "seed.iso" if seed_iso else None, firmware="bios", ovmf_code=None,
                       ovmf_vars=None, accel="tcg", ssh_port=2222, qmp_socket=tmp_path / "q.sock",
                       serial_log=tmp_path / "serial.log", pid_file=tmp_path / "pid", warm=warm)


def warm(tmp_path: Path, *, shared: bool, incoming: bool) -> qemu.Warm:
    return qemu.Warm(machine="pc-q35-7.2", ram_file=tmp_path / "ram", ram_shared=shared,
                     agent_socket=tmp_path / "agent.sock", incoming=incoming)


def test_warm_argv_pins_the_machine_puts_ram_in_the_file_and_adds_the_agent_port(tmp_path: Path) -> None:
    template = qemu.build_argv(spec(tmp_path, warm=warm(tmp_path, shared=True, incoming=False)), daemonize=False)
    assert template[template.index("-machine") + 1] == "pc-q35-7.2,memory-backend=ram0"
    backend = template[template.index("-object") + 1]
    assert backend == f"memory-backend-file,id=ram0,size=256M,mem-path={tmp_path / 'ram'},share=on"
    assert f"virtserialport,chardev=agent0,name={qemu.AGENT_PORT}" in template
    assert "vmgenid,guid=auto" in template and "-incoming" not in template
    restored = qemu.build_argv(spec(tmp_path, warm=warm(tmp_path, shared=False, incoming=True)))
    assert restored[restored.index("-object") + 1].endswith(",share=off")
    assert restored[-2:] == ["-incoming", "defer"]
    plain = qemu.build_argv(spec(tmp_path))
    assert plain[plain.index("-machine") + 1] == "q35,graphics=off"  # a cold boot: SeaBIOS on the serial console
    assert "-object" not in plain and "vmgenid,guid=auto" not in plain


def test_device_set_names_devices_not_paths(tmp_path: Path) -> None:
    one = qemu.device_set(spec(tmp_path, warm=warm(tmp_path, shared=True, incoming=False)))
    other = qemu.device_set(spec(tmp_path / "elsewhere", warm=warm(tmp_path / "x", shared=False, incoming=True)))
    assert one == other
    assert "vmgenid" in one and f"virtserialport:{qemu.AGENT_PORT}" in one
    assert qemu.device_set(spec(tmp_path, warm=warm(tmp_path, shared=True, incoming=False), seed_iso=False)) != one


def test_a_too_long_agent_socket_is_refused(tmp_path: Path) -> None:
    long = qemu.Warm(machine="pc-q35-7.2", ram_file=tmp_path / "ram", ram_shared=True,
                     agent_socket=tmp_path / ("a" * 120) / "agent.sock", incoming=False)
    with pytest.raises(InvalidArgument, match="agent socket"):
        qemu.build_argv(spec(tmp_path, warm=long))


def test_machine_help_is_parsed_for_the_alias() -> None:
    listing = ("Supported machines are:\n"
               "pc-q35-7.1           Standard PC (Q35 + ICH9, 2009)\n"
               "q35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)\n"
               "pc-q35-7.2           Standard PC (Q35 + ICH9, 2009)\n")
    assert migration.parse_machine(listing, "q35") == "pc-q35-7.2"
    with pytest.raises(ToolFailed, match="virt"):
        migration.parse_machine(listing, "virt")


def record(**changes: object) -> WarmRecord:
    values: dict[str, object] = dict(
        version="lab/tiny@1.0.0", version_digest="blake3:" + "ab" * 32, cpus=1, memory_mib=256, firmware="bios",
        arch="x86_64", accel="tcg", cpu_model="max", machine="pc-q35-7.2", qemu_binary="/usr/bin/qemu-system-x86_64",
        qemu_version="QEMU emulator version 7.2.22", devices=("virtio-blk:qcow2", "vmgenid"),
        disks=(WarmDisk(None, "disk-os.qcow2", "blake3:" + "cd" * 32),), created="2026-12-07T12:00:00Z", seconds=48.0)
    values.update(changes)
    return WarmRecord(**values)  # type: ignore[arg-type]


def facts(r: WarmRecord, **changes: object) -> Facts:
    values: dict[str, object] = dict(qemu_binary=r.qemu_binary, qemu_version=r.qemu_version, firmware=r.firmware,
                                     cpu_model=r.cpu_model, accel=r.accel, devices=r.devices)
    values.update(changes)
    return Facts(**values)  # type: ignore[arg-type]


def test_the_warm_record_round_trips_and_refuses_unknown_fields() -> None:
    r = record()
    assert WarmRecord.from_json(json.loads(json.dumps(r.to_json())), "w") == r
    with pytest.raises(Corrupt, match="unknown fields"):
        WarmRecord.from_json({**r.to_json(), "extra": 1}, "w")
    bad_disk = {**r.to_json(), "disks": [{"lun": None, "overlay": "../x", "base_disk": "b"}]}
    with pytest.raises(Corrupt, match="plain file name"):
        WarmRecord.from_json(bad_disk, "w")


@pytest.mark.parametrize(("field", "value", "said"), [
    ("qemu_version", "QEMU emulator version 8.2.0", "QEMU version"),
    ("qemu_binary", "/opt/qemu/bin/qemu-system-x86_64", "QEMU binary"),
    ("firmware", "uefi", "firmware"),
    ("cpu_model", "host", "CPU model"),
    ("devices", ("virtio-blk:qcow2",), "device set"),
])
def test_a_state_that_does_not_fit_is_refused_naming_the_difference_and_version_warm(
        field: str, value: object, said: str) -> None:
    r = record()
    assert warm_state.mismatches(r, facts(r)) == []
    with pytest.raises(Refused) as caught:
        warm_state.check_fits(r, facts(r, **{field: value}))
    assert said in caught.value.message
    assert "imgtool version warm lab/tiny@1.0.0 --cpus 1 --memory 256" in (caught.value.hint or "")


def provisioning(**changes: object) -> seed.Provisioning:
    values: dict[str, object] = dict(instance_id="iid-1", hostname="web-1", admin_user="alice",
                                     ssh_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okW"
                                               "i0dh2l9GKJl a@b",), user_data="#tiny: echo x y > z\n")
    values.update(changes)
    return seed.Provisioning(**values)  # type: ignore[arg-type]


def test_the_request_is_one_line_of_closed_alphabet_fields() -> None:
    request = warm_agent.new_request(provisioning(), clock=1_800_000_000)
    line = request.line()
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    fields = dict(part.split("=", 1) for part in line.decode().split()[1:])
    assert fields["hostname"] == "web-1" and fields["user"] == "alice" and fields["clock"] == "1800000000"
    assert base64.b64decode(fields["userdata"]).decode() == "#tiny: echo x y > z\n"
    assert len(fields["seed"]) == 2 * warm_agent.SEED_BYTES and len(fields["machine_id"]) == 32
    again = warm_agent.new_request(provisioning(), clock=1_800_000_000)
    assert again.rng_seed != request.rng_seed and again.machine_id != request.machine_id
    with pytest.raises(InvalidArgument):
        warm_agent.new_request(provisioning(hostname="bad host"), clock=0)


def test_the_request_carries_a_fresh_host_made_ssh_host_key_and_its_pin() -> None:
    request = warm_agent.new_request(provisioning(), clock=0)
    fields = dict(part.split("=", 1) for part in request.line().decode().split()[1:])
    private = base64.b64decode(fields["hostkey"], validate=True)
    assert private.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    loaded = serialization.load_ssh_private_key(private, password=None)
    public = loaded.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    assert public.decode() == request.host_public() and request.host_public().startswith("ssh-ed25519 ")
    assert warm_agent.known_hosts_line("imgtool-vm-a", request) == f"imgtool-vm-a {request.host_public()}\n"
    assert warm_agent.new_request(provisioning(), clock=0).host_public() != request.host_public()


def test_answers_are_parsed_strictly() -> None:
    assert warm_agent.parse_answer(b"OK " + b"ab" * 32) == warm_agent.Answer(True, "ab" * 32)
    assert warm_agent.parse_answer(b"OK " + b"ab" * 32 + b" hostkey") == warm_agent.Answer(True, "ab" * 32, True)
    assert not warm_agent.parse_answer(b"OK " + b"ab" * 32 + b" hostkey extra").ok
    assert warm_agent.parse_answer(b"FAIL cannot set the clock") == warm_agent.Answer(False, "cannot set the clock")
    assert not warm_agent.parse_answer(b"OK short").ok
    assert not warm_agent.parse_answer(b"READY hostname=x").ok


def test_exchange_talks_to_a_socket_and_fails_clearly_when_nobody_answers(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    got: list[bytes] = []

    def agent() -> None:
        conn, _ = server.accept()
        got.append(conn.makefile("rb").readline())
        conn.sendall(b"FAIL user-data command failed: false\n")
        conn.close()

    thread = threading.Thread(target=agent)
    thread.start()
    answer = warm_agent.exchange(path, warm_agent.new_request(provisioning(), clock=0), timeout=10)
    thread.join()
    assert got[0].startswith(b"PERSONALIZE ") and answer == warm_agent.Answer(False, "user-data command failed: false")
    server.close()
    with pytest.raises(ToolFailed, match="did not answer"):
        warm_agent.exchange(tmp_path / "none.sock", warm_agent.new_request(provisioning(), clock=0), timeout=1)


def test_gc_collects_states_of_gone_versions_and_half_made_ones_of_dead_writers(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    live, gone = "ab" * 32, "cd" * 32
    mine = f".tmp-{os.getpid()}-y-1c-512m"
    for version, name in ((live, "1c-256m"), (live, ".tmp-999999999-x-2c-256m"), (live, mine), (gone, "1c-256m")):
        (warm_state.root(home) / version / name).mkdir(parents=True)
    found = {(p.parent.name, p.name): why for p, why in warm_state.collectable(home, {live})}
    assert found == {("warm", gone): "its version is deleted or revoked",
                     (live, ".tmp-999999999-x-2c-256m"): "a half-made warm state whose writer is gone"}


def test_a_request_a_warm_start_would_treat_differently_boots_cold_without_looking(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "none")  # never read: the request alone decides
    base = vm.NewVm(name="v", image="lab/tiny@1.0.0")
    for changes in ({"disk_size": 1 << 30}, {"user_data": tmp_path / "ud"}):
        assert warm_new.choose(home, dataclasses.replace(base, **changes)) == warm_new.Choice(False)
    assert not (tmp_path / "none").exists()
    assert warm_new.choose(home, base) == warm_new.Choice(False)  # no such version: the cold path says so


def test_cold_applies_only_to_a_vm_that_starts_and_not_with_warm(tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    for extra in ((), ("--start", "--warm")):
        done = cli("vm", "new", "v", "--image", "lab/tiny@1.0.0", "--cold", *extra, ok=False)
        assert done.returncode == 2 and "--cold applies to a VM that starts" in done.stderr, done.stderr
    assert not (tmp_path / "home" / "vms" / "v").exists()
