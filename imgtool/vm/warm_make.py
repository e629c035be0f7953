"""`version warm`: boot a template VM from a generalized version, pause it once its agent waits,
and save its device state, RAM and disks as a warm state (layout in `warm_state`).

The template is an ordinary QEMU with the warm devices (`qemu.Warm`), run as a tethered child of
this process: if `version warm` dies, even by SIGKILL, the template dies with it and only the
temporary folder is left. Its seed gives it a throwaway hostname and instance id and no admin
key, so the saved state holds no credentials of anyone's; every VM restored from it gets its own
identity from the agent before it is handed over.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

from imgtool.clock import stamp
from imgtool.errors import InvalidArgument, Refused, ToolFailed
from imgtool.gallery import lookup
from imgtool.gallery.model import Definition, ImageVersion
from imgtool.home import Home
from imgtool.names import parse_image_ref
from imgtool.tools import accel, migration, qemu, qemu_img, run, sockets
from imgtool.tools.ports import free_port
from imgtool.vm import bases, seed, warm_agent, warm_state
from imgtool.vm import lifecycle as vm
from imgtool.vm.warm_state import WarmDisk, WarmRecord
from store import atomic
from store.progress import Progress

TEMPLATE_HOST = "warm-template"
TEMPLATE_USER = "template"
SAVE_TIMEOUT = 300.0


@dataclass(frozen=True)
class WarmRequest:
    image: str
    cpus: int | None = None
    memory_mib: int | None = None
    requested_accel: str | None = None
    timeout: float = 600.0  # for the template to boot until its agent waits


def sizes(home: Home, version: ImageVersion, cpus: int | None, memory_mib: int | None) -> tuple[Definition, int, int]:
    """The definition in force and the vCPUs/memory a VM of this version gets (vm new's defaults)."""
    definition = vm._definition(home, version)
    return definition, vm._pick(cpus, definition.vcpus, 2), vm._pick(memory_mib, definition.memory_mib, 512)


def cpu_model(accel_name: str) -> str:
    return "max" if accel_name == "tcg" else "host"  # what qemu.build_argv asks for


def make(home: Home, req: WarmRequest, *, progress: Progress | None = None) -> warm_state.Found:
    """Build (or rebuild) the warm state of a version at one size; returns it."""
    started = time.monotonic()
    run.which("zstd")  # QEMU's exec: migration runs it; missing, say so now rather than as a failed save
    version, digest = lookup.get_version(home, parse_image_ref(req.image))
    _check_version(version)
    definition, cpus, memory = sizes(home, version, req.cpus, req.memory_mib)
    vm._check_resources(vm.NewVm(name="warm", image=req.image), definition, cpus, memory)
    accel_name = accel.choose_accel(home.cache, requested=req.requested_accel, arch=definition.architecture)
    home.ensure()
    final = warm_state.state_dir(home, digest, cpus, memory)
    for folder in (warm_state.root(home), final.parent):
        folder.mkdir(mode=0o700, exist_ok=True)
    tmp = final.parent / f"{atomic.TMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}-{final.name}"
    tmp.mkdir(mode=0o700)
    try:
        with home.store.writing():
            base_paths = {d.digest: bases.ensure(home, d.digest, progress=progress) for d in version.disks}
            record = _build(home, tmp, version, digest, definition, cpus, memory, accel_name, base_paths, req)
            record = WarmRecord(**{**record.__dict__, "seconds": time.monotonic() - started})
            atomic.replace(tmp / warm_state.RECORD, _json(record))
            warm_state.install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return warm_state.Found(final, record)


def _json(record: WarmRecord) -> bytes:
    return json.dumps(record.to_json(), indent=2, sort_keys=True).encode()


def _check_version(version: ImageVersion) -> None:
    label = f"{version.gallery}/{version.definition}@{version.version}"
    if version.os_state != "generalized":
        raise Refused(f"version {label} is specialized: a warm state is made from a generalized version, whose VMs "
                      "each get their own identity", hint="publish a generalized version (imgtool vm generalize)")
    if version.revocation is not None:
        raise Refused(f"version {label} is revoked: {version.revocation.reason}", hint="use another version")


def _build(home: Home, tmp: Path, version: ImageVersion, digest: str, definition: Definition, cpus: int,
           memory: int, accel_name: str, base_paths: dict[str, Path], req: WarmRequest) -> WarmRecord:
    disks = []
    for disk in version.disks:
        overlay = "disk-os.qcow2" if disk.lun is None else f"disk-lun{disk.lun}.qcow2"
        qemu_img.create_overlay(tmp / overlay, backing=base_paths[disk.digest], backing_fmt="raw")
        os.chmod(tmp / overlay, 0o600)
        disks.append(WarmDisk(disk.lun, overlay, disk.digest))
    template = seed.Provisioning(seed.new_instance_id(), TEMPLATE_HOST, TEMPLATE_USER)
    seed.write_seed(tmp / "seed.iso", template)
    spec = _spec(tmp, definition, cpus, memory, accel_name, disks)
    devices = qemu.device_set(spec)
    _run_template(tmp, spec, req.timeout)
    for name in ("seed.iso", "serial.log", "qemu.pid"):
        (tmp / name).unlink(missing_ok=True)
    # Pages the guest left zero become holes: a third of the tiny template's RAM file (measured); a
    # private mapping reads a hole as zeros, so restored VMs see the same RAM.
    run.run(["fallocate", "--dig-holes", str(tmp / warm_state.RAM)], timeout=120)
    for made in disks:
        os.chmod(tmp / made.overlay, 0o400)  # frozen: every VM starts from a copy
    label = f"{version.gallery}/{version.definition}@{version.version}"
    return WarmRecord(version=label, version_digest=digest, cpus=cpus, memory_mib=memory,
                      firmware=definition.firmware, arch=definition.architecture, accel=accel_name,
                      cpu_model=cpu_model(accel_name), machine=spec.warm.machine if spec.warm else "",
                      qemu_binary=run.which(qemu.qemu_binary(definition.architecture)),
                      qemu_version=accel.qemu_version(definition.architecture), devices=tuple(devices),
                      disks=tuple(disks), created=stamp(), seconds=0.0)


def _spec(tmp: Path, definition: Definition, cpus: int, memory: int, accel_name: str,
          disks: list[WarmDisk]) -> qemu.VmSpec:
    binary = qemu.qemu_binary(definition.architecture)
    machine = migration.machine_name(binary, qemu.machine_alias(definition.architecture))
    code, vars_path = None, None
    if definition.firmware == "uefi":
        code, template_vars = accel.ovmf_paths()
        vars_path = tmp / warm_state.VARS
        shutil.copyfile(template_vars, vars_path)
        os.chmod(vars_path, 0o600)
    ram = tmp / warm_state.RAM
    os.close(os.open(ram, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))  # QEMU would make it 0644
    warm = qemu.Warm(machine=machine, ram_file=ram, ram_shared=True, agent_socket=socket_path(tmp, "agent"),
                     incoming=False)
    return qemu.VmSpec(
        name=f"warm-{tmp.name[-24:]}", arch=definition.architecture, cpus=cpus, memory_mib=memory,
        disks=tuple(qemu.Drive(tmp / d.overlay) for d in disks), seed=tmp / "seed.iso", firmware=definition.firmware,
        ovmf_code=code, ovmf_vars=vars_path, accel=accel_name, ssh_port=free_port(),
        qmp_socket=socket_path(tmp, "qmp"), serial_log=tmp / "serial.log", pid_file=tmp / "qemu.pid", warm=warm)


def socket_path(folder: Path, what: str) -> Path:
    """A unix socket for `folder`: in it when the path fits, else in the private temp folder."""
    candidate = folder / f"{what}.sock"
    if sockets.fits(candidate):
        return candidate
    return sockets.private_dir() / f"{blake3.blake3(os.fsencode(folder)).hexdigest()[:20]}.{what}"


def _run_template(tmp: Path, spec: qemu.VmSpec, timeout: float) -> None:
    guest = run.spawn(qemu.build_argv(spec, daemonize=False), tethered=True, output=tmp / "qemu.log")
    try:
        _wait_agent(tmp / "serial.log", guest, timeout)
        state = tmp / warm_state.STATE
        os.close(os.open(state, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        migration.save(spec.qmp_socket, state, timeout=SAVE_TIMEOUT)
    finally:
        guest.stop(timeout=10)  # after a save QEMU holds nothing we need; its RAM is in the file
        (tmp / "qemu.log").unlink(missing_ok=True)
        if spec.warm is not None and not spec.warm.agent_socket.is_relative_to(tmp):
            spec.warm.agent_socket.unlink(missing_ok=True)
        if not spec.qmp_socket.is_relative_to(tmp):
            spec.qmp_socket.unlink(missing_ok=True)


def _wait_agent(console: Path, guest: run.Background, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace") if console.exists() else ""
        if warm_agent.WAITING in text:
            return
        if not guest.alive():
            raise ToolFailed(f"the template VM exited before its agent was ready: {guest.stderr()[-300:]}",
                             hint="run with --debug; check that the version boots (imgtool vm new ... --start)")
        time.sleep(0.2)
    tail = console.read_text(errors="replace")[-400:] if console.exists() else ""
    raise ToolFailed(f"the template VM's agent did not report '{warm_agent.WAITING}' within {timeout:g}s; "
                     f"console tail: {tail!r}",
                     hint="the image needs the imgtool agent (scripts/testimage/agent, scripts/debian/imgtool-agent); "
                          "or give --timeout longer")


def check_size_args(cpus: int | None, memory_mib: int | None) -> None:
    if cpus is not None and cpus < 1:
        raise InvalidArgument(f"--cpus must be at least 1, got {cpus}", hint="give --cpus 1 or more")
    if memory_mib is not None and memory_mib < qemu.MIN_MEMORY_MIB:
        raise InvalidArgument(f"--memory must be at least {qemu.MIN_MEMORY_MIB} MiB", hint="give a larger --memory")
