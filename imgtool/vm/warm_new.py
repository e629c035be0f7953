"""`vm new --warm`: a VM restored from its version's warm state, personalized before anyone can use it.

Order, and why:
1. Under the warm state's lock (held until the VM exists, so a rebuild cannot swap files in between;
   concurrent warm `vm new`s of one state take turns), everything is checked before anything is
   made: the version, the sizes, the warm state of exactly those sizes, and that it fits the VM QEMU
   would start now (binary, version, firmware, CPU model, accelerator, device set): a state loaded
   into another QEMU fails or corrupts.
2. The VM folder gets copies of the template's frozen overlays (same bases, so the VM is an
   ordinary one afterwards: capture, snapshot, generalize and a cold start all work), its own
   NoCloud seed (for later cold boots, with the instance id the agent writes, so they are not
   first boots) and, for UEFI, the template's variables.
3. QEMU starts daemonized with `-incoming defer`, its RAM the warm state's file mapped privately
   (copy-on-write: VMs of one state share the pages none of them changed). A tethered guard,
   started before QEMU, kills it if this process dies before step 5: a killed `vm new --warm` never leaves a running
   VM with the template's identity, only a folder without a record, which gc removes.
4. The state is loaded, the VM resumed, and the agent personalizes it (hostname, machine-id,
   instance id, admin user and key, RNG seed, clock, SSH host key made here, network, user-data);
   any failure or a missing answer stops QEMU and deletes the VM, with the reason. When the agent
   installed the host key, the VM's known_hosts pins it (no trust on first use).
5. `vm.json` is written last: from then on the VM exists, running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool import clock
from imgtool.clock import stamp
from imgtool.errors import ImgtoolError, InvalidArgument, NotFound, Refused, ToolFailed
from imgtool.gallery import lookup
from imgtool.gallery.model import Definition, ImageVersion
from imgtool.home import Home
from imgtool.names import parse_image_ref
from imgtool.tools import accel, migration, qemu, run
from imgtool.tools.ports import free_port
from imgtool.vm import bases, options, seed, ssh_config, warm_agent, warm_make, warm_state
from imgtool.vm import lifecycle as vm
from imgtool.vm import runtime as vmrun
from imgtool.vm import state as vmstate
from imgtool.vm.record import SeedInfo, VmDisk, VmRecord, save, vm_dir
from imgtool.vm.warm_state import Found
from store import atomic
from store.lock import file_lock

LOAD_TIMEOUT = 120.0
AGENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class WarmStart:
    """What a warm vm new did, and how long each part took (seconds)."""

    record: VmRecord
    runtime: vmstate.RunState
    state: Path
    restore_seconds: float
    personalize_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.name, "restore_seconds": round(self.restore_seconds, 2),
                "personalize_seconds": round(self.personalize_seconds, 2)}


def create(home: Home, req: vm.NewVm, *, requested_accel: str | None = None) -> WarmStart:
    """Make and start a VM from the version's warm state of its size; see the module's notes."""
    version, digest = lookup.get_version(home, parse_image_ref(req.image))
    _, cpus, memory = warm_make.sizes(home, version, req.cpus, req.memory_mib)
    state_lock = warm_state.lock_path(warm_state.state_dir(home, digest, cpus, memory))
    if not state_lock.parent.is_dir():  # no warm state of this version at all: say so without making folders
        _plan(home, req, version, digest, requested_accel)
    home.ensure()
    folder = vm_dir(home, req.name)
    with file_lock(state_lock), home.store.writing(), file_lock(home.vms / f".{req.name}.lock"):
        definition, provisioning, found, accel_name = _plan(home, req, version, digest, requested_accel)
        vm._claim(folder, req.name)
        try:
            record = _files(home, folder, req, version, digest, definition, provisioning, found)
            return _restore(home, folder, record, found, provisioning, accel_name)
        except BaseException:
            _kill_qemu(folder)
            shutil.rmtree(folder, ignore_errors=True)
            raise


@dataclass(frozen=True)
class Choice:
    """Whether a plain `vm new --start` restores the VM warm (see `choose`), and why not when it cannot."""

    warm: bool
    note: str | None = None  # a matching state exists but cannot be used: what to do about it


def choose(home: Home, req: vm.NewVm, *, requested_accel: str | None = None) -> Choice:
    """Warm by default, measured (docs/BENCHMARKS.md): when the version has a warm state of the VM's size
    that fits the QEMU it would get, and the request asks nothing a warm start does differently (a disk
    size, user-data, which the agents apply only in part, shared folders or networks). Checks only."""
    if req.disk_size is not None or req.user_data is not None or req.shares or req.networks:
        return Choice(False)
    try:
        version, digest = lookup.get_version(home, parse_image_ref(req.image))
        _, cpus, memory = warm_make.sizes(home, version, req.cpus, req.memory_mib)
    except ImgtoolError:
        return Choice(False)  # the cold path reports it
    if not warm_state.state_dir(home, digest, cpus, memory).is_dir():
        return Choice(False)
    try:
        _plan(home, req, version, digest, requested_accel)
    except ImgtoolError as exc:
        return Choice(False, f"the warm state of {version.label} was not used: {exc.message}; booting cold"
                             + (f" ({exc.hint})" if exc.hint else ""))
    return Choice(True)


def _plan(home: Home, req: vm.NewVm, version: ImageVersion, digest: str,
          requested_accel: str | None) -> tuple[Definition, seed.Provisioning, Found, str]:
    if version.revocation is not None and not req.allow_revoked:
        raise Refused(f"version {version.label} is revoked: {version.revocation.reason}",
                      hint="use another version, or pass --allow-revoked (recorded on the VM)")
    if req.disk_size is not None:
        raise InvalidArgument("--disk-size cannot be used with --warm: the warm state's disks have the size they "
                              "were saved with", hint="omit --disk-size, or create the VM without --warm")
    definition, cpus, memory = warm_make.sizes(home, version, req.cpus, req.memory_mib)
    vm._check_resources(req, definition, cpus, memory)
    options.check_forwards(req.forwards)
    provisioning = vm._provisioning(req, version)
    if provisioning is None:
        raise Refused(f"{req.image} is specialized and has no warm state", hint="create the VM without --warm")
    seed.validate(provisioning)
    found = _find(home, version, digest, cpus, memory)
    run.which("zstd")  # QEMU's exec: migration reads the state through it
    accel_name = accel.choose_accel(home.cache, requested=requested_accel, arch=definition.architecture)
    warm_state.check_fits(found.record, _facts(home, found, definition, accel_name, req))
    return definition, provisioning, found, accel_name


def _find(home: Home, version: ImageVersion, digest: str, cpus: int, memory: int) -> Found:
    folder = warm_state.state_dir(home, digest, cpus, memory)
    try:
        return Found(folder, warm_state.read(folder))
    except NotFound:
        made = ", ".join(f"{f.record.cpus} vCPUs/{f.record.memory_mib} MiB" for f in warm_state.list_for(home, digest))
        raise NotFound(f"version {version.label} has no warm state for {cpus} vCPUs and {memory} MiB"
                       + (f" (it has: {made})" if made else ""),
                       hint=f"make one: imgtool version warm {version.label} --cpus {cpus} --memory {memory}") from None


def _facts(home: Home, found: Found, definition: Definition, accel_name: str, req: vm.NewVm) -> warm_state.Facts:
    """What a VM made now would get, in the terms of the warm state's record."""
    placeholder = SeedInfo("seed.iso", "", "", "", "", None)  # a VM of a generalized version has a seed
    probe = _record(req, found, definition, placeholder, "", "")
    spec = _spec(home, probe, found, accel_name, port=1)
    binary = qemu.qemu_binary(definition.architecture)
    return warm_state.Facts(qemu_binary=run.which(binary), qemu_version=accel.qemu_version(definition.architecture),
                            firmware=definition.firmware, cpu_model=warm_make.cpu_model(accel_name), accel=accel_name,
                            devices=tuple(qemu.device_set(spec)))


def _record(req: vm.NewVm, found: Found, definition: Definition, seed_info: SeedInfo | None, version_digest: str,
            definition_record: str) -> VmRecord:
    w = found.record
    disks = tuple(VmDisk(d.lun, d.overlay, "", d.base_disk, 0) for d in w.disks)
    return VmRecord(name=req.name, created=stamp(), image=w.version, version_digest=version_digest,
                    os_state="generalized", definition=definition.to_json(), definition_record=definition_record,
                    cpus=w.cpus, memory_mib=w.memory_mib, firmware=w.firmware, arch=w.arch, disks=disks, seed=seed_info,
                    forwards=req.forwards, allowed_revoked=None)


def _files(home: Home, folder: Path, req: vm.NewVm, version: ImageVersion, digest: str, definition: Definition,
           provisioning: seed.Provisioning, found: Found) -> VmRecord:
    disks = []
    for disk, warm_disk in zip(version.disks, found.record.disks, strict=True):
        base = bases.ensure(home, disk.digest)  # gc may have evicted it; the same digest rebuilds the same bytes
        shutil.copyfile(found.folder / warm_disk.overlay, folder / warm_disk.overlay)
        os.chmod(folder / warm_disk.overlay, 0o600)
        disks.append(VmDisk(disk.lun, warm_disk.overlay, str(base), disk.digest, disk.virtual_size))
    seed_digest = seed.write_seed(folder / "seed.iso", provisioning)
    seed_info = SeedInfo("seed.iso", seed_digest, provisioning.instance_id, provisioning.hostname,
                         provisioning.admin_user, str(req.ssh_key or vm._default_key() or "") or None)
    if found.record.firmware == "uefi":
        shutil.copyfile(found.folder / warm_state.VARS, folder / "ovmf-vars.fd")
        os.chmod(folder / "ovmf-vars.fd", 0o600)
    record = _record(req, found, definition, seed_info, digest, version.definition_record)
    return dataclasses.replace(record, disks=tuple(disks),
                               allowed_revoked=version.revocation.reason if version.revocation else None)


def _spec(home: Home, record: VmRecord, found: Found, accel_name: str, *, port: int) -> qemu.VmSpec:
    folder = vm_dir(home, record.name)
    spec = vmrun.spec_for(home, record, accel_name=accel_name, port=port)
    warm = qemu.Warm(machine=found.record.machine, ram_file=found.folder / warm_state.RAM, ram_shared=False,
                     agent_socket=warm_make.socket_path(folder, "agent"), incoming=True)
    return dataclasses.replace(spec, warm=warm)


def _restore(home: Home, folder: Path, record: VmRecord, found: Found, provisioning: seed.Provisioning,
             accel_name: str) -> WarmStart:
    begun = time.monotonic()
    spec = _spec(home, record, found, accel_name, port=free_port())
    argv = qemu.build_argv(spec, daemonize=True)
    guard = _guard(folder / "qemu.pid")  # before QEMU: no moment without one
    try:
        run.run(argv, timeout=120)
        pid = int((folder / "qemu.pid").read_text().strip())
        migration.load(spec.qmp_socket, found.folder / warm_state.STATE, timeout=LOAD_TIMEOUT)
        migration.resume(spec.qmp_socket)
        restored = time.monotonic()
        _personalize(spec, provisioning, record.name, folder)
        runtime = vmstate.RunState(pid, accel_name, spec.ssh_port, str(spec.qmp_socket), stamp(), tuple(argv),
                                   record.forwards, warm=found.folder.name)
        atomic.replace(folder / vmrun.STATE, runtime.dumps())
        save(home, record)  # the commit point: from here on the VM exists
    finally:
        _disarm(guard)
    return WarmStart(record, runtime, found.folder, restored - begun, time.monotonic() - restored)


def _personalize(spec: qemu.VmSpec, provisioning: seed.Provisioning, name: str, folder: Path) -> None:
    assert spec.warm is not None
    request = warm_agent.new_request(provisioning, clock=int(clock.now().timestamp()))
    try:
        answer = warm_agent.exchange(spec.warm.agent_socket, request, timeout=AGENT_TIMEOUT)
    except ToolFailed as exc:
        raise ToolFailed(f"personalizing VM '{name}' failed, so it was deleted: {exc.message}",
                         hint="rebuild the warm state (imgtool version warm ...), or create the VM without --warm") \
            from None
    if not answer.ok:
        raise ToolFailed(f"personalizing VM '{name}' failed, so it was deleted: the guest agent said: {answer.detail}",
                         hint="create the VM without --warm, or rebuild the warm state (imgtool version warm ...)")
    if answer.host_key:  # the key was made here: pin it now rather than trust the first answer (accept-new)
        line = warm_agent.known_hosts_line(ssh_config.SshHost(name, 0, None, None, folder).alias, request)
        atomic.replace(folder / ssh_config.KNOWN_HOSTS, line.encode())


# On TERM: wait (bounded) for a QEMU being started to write its pid file, then SIGKILL that pid.
_GUARD = ('trap \'i=0; while [ ! -s "$1" ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done; '
          'kill -9 "$(cat "$1" 2>/dev/null)" 2>/dev/null; exit 0\' TERM; while :; do sleep 1; done')


def _guard(pid_file: Path) -> run.Background:
    """A tethered shell that SIGKILLs the QEMU of `pid_file` when this process dies (it gets SIGTERM then)."""
    return run.spawn(["sh", "-c", _GUARD, "imgtool-warm-guard", str(pid_file)], tethered=True,
                     death_signal=signal.SIGTERM)


def _disarm(guard: run.Background) -> None:
    """Stop the guard without letting its trap run (SIGKILL, not SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(guard.pid, signal.SIGKILL)
    guard.stop(timeout=5)


def _kill_qemu(folder: Path) -> None:
    """Stop a QEMU this vm new started (its pid file is in the folder), before the folder goes."""
    try:
        pid = int((folder / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return
    if vmrun._qemu_alive(pid):
        os.kill(pid, signal.SIGKILL)
