"""QEMU command lines as data: a VmSpec in, an argv list out.

This module is pure: it reads no files, runs nothing and imports nothing with side
effects, so every choice below is testable by comparing lists. Host discovery
(OVMF paths, which accelerator works, a free port) lives in `imgtool.accel` and
`imgtool.ports`; running the argv is the caller's job, through `imgtool.run`.

Choices, with reasons:
- `-accel tcg,thread=multi` / `-accel kvm` rather than `-machine ...,accel=`: the
  two spellings are mutually exclusive in QEMU and only `-accel` takes accelerator
  properties; multi-threaded TCG gives each vCPU its own host thread.
- `-cpu max` under TCG (every feature TCG can emulate), `-cpu host` under KVM.
- `-nodefaults -no-user-config`: no surprise devices or host config files; every
  device the guest sees is listed here.
- Disks are `if=virtio` with `cache=writeback` (honours guest flushes, and unlike
  `cache=none` works on tmpfs, which has no O_DIRECT) and `discard=unmap` (guest
  TRIM shrinks the qcow2 overlay). The OS disk is first so firmware boots it.
- The serial console, QMP socket and drives are given through `-chardev`/`-drive`
  option strings in which commas in paths are doubled, QEMU's escape.
- A virtio RNG: a freshly booted guest generating SSH host keys would otherwise
  wait on entropy.
- No `-no-reboot`: a guest that reboots should come back.
- Warm starts (`Warm`): guest RAM is a file (`memory-backend-file`, named by `-machine
  memory-backend=`), shared (the template writes its RAM into the file) or private (a VM maps the
  saved file copy-on-write, so VMs restored from one warm state share its unchanged pages); a
  virtio-serial port for the personalization agent; a `vmgenid` device, whose new GUID on restore
  makes a guest kernel with the driver reseed its RNG at once; `-incoming defer`, so the caller can
  set the migration capabilities before the state is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import InvalidArgument
from imgtool.vocab import MAX_SOCKET_PATH, Architecture, Firmware, values

ARCHES = values(Architecture)
ACCELS = ("kvm", "tcg")
FIRMWARES = values(Firmware)
DRIVE_FORMATS = ("qcow2", "raw")
MIN_MEMORY_MIB = 64

_MACHINE = {"x86_64": "q35", "aarch64": "virt"}
# graphics=off: with no display, SeaBIOS writes its boot messages ("Booting from Hard Disk...", "Boot failed:
# not a bootable disk") to the serial console, so the console shows life from the first second and a disk
# that cannot boot says so there. Cold boots only: a warm start restores its template's machine as it was.
_COLD_MACHINE = {"x86_64": "q35,graphics=off", "aarch64": "virt"}


@dataclass(frozen=True)
class Drive:
    """One disk image attached as a virtio block device."""

    path: Path
    format: str = "qcow2"
    readonly: bool = False
    stream: StreamBacking | None = None  # a qcow2 overlay whose backing is served over NBD (streaming)


@dataclass(frozen=True)
class StreamBacking:
    """An overlay's backing given at run time: an NBD export on a Unix socket (imgtool's stream server).

    The overlay's header names the local base the disk gets once hydrated, never the socket, so the
    same overlay later runs over that base with no server."""

    socket: Path
    export: str


@dataclass(frozen=True)
class VmSpec:
    """Everything QEMU needs to run one VM; see `build_argv` for how each field is used."""

    name: str
    arch: str  # "x86_64" | "aarch64"
    cpus: int
    memory_mib: int
    disks: tuple[Drive, ...]  # OS disk first, then data disks by LUN order
    seed: Path | None  # NoCloud ISO, read-only virtio drive after the disks
    firmware: str  # "bios" | "uefi"
    ovmf_code: Path | None  # uefi only: read-only pflash code
    ovmf_vars: Path | None  # uefi only: this VM's own writable copy of the vars
    accel: str  # "kvm" | "tcg"
    ssh_port: int  # host loopback port forwarded to guest port 22
    qmp_socket: Path
    serial_log: Path
    pid_file: Path
    forwards: tuple[tuple[int, int], ...] = ()  # extra (host port, guest port) TCP forwards on 127.0.0.1
    warm: Warm | None = None  # a warm template or a VM restored from a warm state


AGENT_PORT = "org.imgtool.agent"  # the virtio-serial port name the guest agent looks for
RAM_ID = "ram0"


@dataclass(frozen=True)
class Warm:
    """What a warm template and a VM restored from its state add to a VM (see the module's notes)."""

    machine: str  # the resolved machine type (e.g. "pc-q35-7.2"): a saved state loads only into the same one
    ram_file: Path
    ram_shared: bool  # True for the template (its RAM lands in the file), False for a restored VM
    agent_socket: Path  # unix socket QEMU listens on for the agent's port
    incoming: bool  # start paused, waiting for `migrate-incoming`


def qemu_binary(arch: str) -> str:
    """The QEMU system emulator for a guest architecture, e.g. "qemu-system-x86_64"."""
    if arch not in ARCHES:
        raise InvalidArgument(f"unknown architecture {arch!r}", hint=f"use one of {', '.join(ARCHES)}")
    return f"qemu-system-{arch}"


def machine_alias(arch: str) -> str:
    """The machine type imgtool asks for ("q35", "virt"); QEMU resolves it to a versioned one."""
    qemu_binary(arch)
    return _MACHINE[arch]


def escape(value: str | Path) -> str:
    """A value safe inside a QEMU `key=value,...` option string (commas are doubled)."""
    return str(value).replace(",", ",,")


def validate(spec: VmSpec) -> None:
    """Raise InvalidArgument unless the spec describes a VM QEMU can start."""
    qemu_binary(spec.arch)
    _validate_shape(spec)
    _validate_firmware(spec)
    for drive in spec.disks:
        if drive.format not in DRIVE_FORMATS:
            raise InvalidArgument(
                f"disk {drive.path} has unsupported format {drive.format!r}",
                hint=f"use one of {', '.join(DRIVE_FORMATS)}",
            )
    if len(str(spec.qmp_socket).encode()) > MAX_SOCKET_PATH:
        raise InvalidArgument(
            f"QMP socket path is longer than {MAX_SOCKET_PATH} bytes: {spec.qmp_socket}",
            hint="use a shorter state directory",
        )
    warm_paths = (spec.warm.ram_file, spec.warm.agent_socket) if spec.warm else ()
    if spec.warm and len(str(spec.warm.agent_socket).encode()) > MAX_SOCKET_PATH:
        raise InvalidArgument(f"agent socket path is longer than {MAX_SOCKET_PATH} bytes: {spec.warm.agent_socket}",
                              hint="use a shorter state directory")
    for path in (spec.qmp_socket, spec.serial_log, spec.pid_file, *(d.path for d in spec.disks), *warm_paths):
        if "\n" in str(path) or "\0" in str(path):
            raise InvalidArgument(f"path {str(path)!r} contains a newline or NUL", hint="rename it")


def _validate_shape(spec: VmSpec) -> None:
    if not spec.name or any(not ch.isprintable() for ch in spec.name):
        raise InvalidArgument(f"VM name {spec.name!r} is empty or not printable", hint="use a plain name")
    if spec.cpus < 1:
        raise InvalidArgument(f"cpus must be at least 1, got {spec.cpus}", hint="give --cpus 1 or more")
    if spec.memory_mib < MIN_MEMORY_MIB:
        raise InvalidArgument(
            f"memory must be at least {MIN_MEMORY_MIB} MiB, got {spec.memory_mib}",
            hint=f"give --memory {MIN_MEMORY_MIB} or more",
        )
    if not spec.disks:
        raise InvalidArgument("a VM needs at least its OS disk", hint="this is a bug in the caller")
    if spec.accel not in ACCELS:
        raise InvalidArgument(f"unknown accelerator {spec.accel!r}", hint=f"use one of {', '.join(ACCELS)}")
    if not 1 <= spec.ssh_port <= 65535:
        raise InvalidArgument(f"ssh port {spec.ssh_port} is out of range", hint="use 1-65535")
    hosts = [spec.ssh_port, *(host for host, _ in spec.forwards)]
    for host, guest in spec.forwards:
        if not (1 <= host <= 65535 and 1 <= guest <= 65535):
            raise InvalidArgument(f"forward {host}:{guest} is out of range", hint="ports are 1-65535")
    if len(set(hosts)) != len(hosts):
        raise InvalidArgument("a host port is forwarded twice", hint="give each forward its own host port")


def _validate_firmware(spec: VmSpec) -> None:
    if spec.firmware not in FIRMWARES:
        raise InvalidArgument(f"unknown firmware {spec.firmware!r}", hint=f"use one of {', '.join(FIRMWARES)}")
    if spec.firmware == "uefi" and (spec.ovmf_code is None or spec.ovmf_vars is None):
        raise InvalidArgument(
            "uefi firmware needs both the OVMF code and a per-VM vars file",
            hint="find them with imgtool.accel.ovmf_paths() and copy the vars file per VM",
        )
    if spec.firmware == "bios" and (spec.ovmf_code is not None or spec.ovmf_vars is not None):
        raise InvalidArgument("OVMF files were given for a bios VM", hint="use firmware uefi or drop them")
    if spec.arch == "aarch64" and spec.firmware != "uefi":
        raise InvalidArgument("aarch64 VMs boot with uefi only", hint="use firmware uefi")


def build_argv(spec: VmSpec, *, daemonize: bool = True) -> list[str]:
    """The full QEMU argv for `spec` (validated first; InvalidArgument if it cannot run)."""
    validate(spec)
    argv = [qemu_binary(spec.arch)]
    argv += _machine_args(spec)
    argv += _host_args(spec, daemonize)
    argv += _firmware_args(spec)
    argv += _disk_args(spec)
    argv += _device_args(spec)
    argv += _warm_args(spec)
    return argv


def device_set(spec: VmSpec) -> list[str]:
    """The devices the guest sees, host paths left out: a saved state restores only onto the same set."""
    disks = [f"virtio-blk:{d.format}{':ro' if d.readonly else ''}" for d in spec.disks]
    devices = [*disks, *(["virtio-blk:seed"] if spec.seed else []), "virtio-net-pci", "virtio-rng-pci"]
    if spec.firmware == "uefi":
        devices.append("pflash:ovmf")
    if spec.warm:
        devices += ["virtio-serial-pci", f"virtserialport:{AGENT_PORT}", "vmgenid"]
    return devices


def _machine_args(spec: VmSpec) -> list[str]:
    accel = "tcg,thread=multi" if spec.accel == "tcg" else "kvm"
    machine = _COLD_MACHINE[spec.arch] if spec.warm is None else f"{spec.warm.machine},memory-backend={RAM_ID}"
    return [
        "-name", f"guest={escape(spec.name)}",
        "-machine", machine,
        "-accel", accel,
        "-cpu", "max" if spec.accel == "tcg" else "host",
        "-smp", str(spec.cpus),
        "-m", f"{spec.memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
    ]  # fmt: skip


def _host_args(spec: VmSpec, daemonize: bool) -> list[str]:
    args = [
        "-chardev", f"file,id=serial0,path={escape(spec.serial_log)}",
        "-serial", "chardev:serial0",
        "-chardev", f"socket,id=qmp0,path={escape(spec.qmp_socket)},server=on,wait=off",
        "-mon", "chardev=qmp0,mode=control",
        "-pidfile", str(spec.pid_file),
    ]  # fmt: skip
    if daemonize:
        args.append("-daemonize")
    return args


def _firmware_args(spec: VmSpec) -> list[str]:
    if spec.firmware != "uefi":
        return []
    assert spec.ovmf_code is not None and spec.ovmf_vars is not None  # checked by validate()
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={escape(spec.ovmf_code)}",
        "-drive", f"if=pflash,format=raw,unit=1,file={escape(spec.ovmf_vars)}",
    ]  # fmt: skip


def _disk_args(spec: VmSpec) -> list[str]:
    args: list[str] = []
    for number, drive in enumerate(spec.disks):
        if drive.stream is not None:
            args += _streamed_disk_args(drive, drive.stream, f"disk{number}")
            continue
        option = f"file={escape(drive.path)},if=virtio,format={drive.format},cache=writeback,discard=unmap"
        if drive.readonly:
            option += ",readonly=on"
        args += ["-drive", option]
    if spec.seed is not None:
        args += ["-drive", f"file={escape(spec.seed)},if=virtio,format=raw,readonly=on"]
    return args


RECONNECT_DELAY = 30  # seconds QEMU holds requests while the stream server is restarted, then re-sends them


def _streamed_disk_args(drive: Drive, backing: StreamBacking, node: str) -> list[str]:
    """The overlay over an NBD backing, as three -blockdev nodes and a virtio-blk device that stops the
    VM on an I/O error (`rerror=stop`): a chunk the registry cannot give now pauses the guest, never
    hands it an error it cannot survive; imgtool resumes it when the chunk arrives."""
    return [
        "-blockdev", f"driver=nbd,node-name={node}-base,server.type=unix,server.path={escape(backing.socket)},"
                     f"export={escape(backing.export)},reconnect-delay={RECONNECT_DELAY},read-only=on",
        "-blockdev", f"driver=file,node-name={node}-file,filename={escape(drive.path)},discard=unmap",
        "-blockdev", f"driver=qcow2,node-name={node},file={node}-file,backing={node}-base,discard=unmap",
        "-device", f"virtio-blk-pci,drive={node},rerror=stop,werror=stop",
    ]  # fmt: skip


def _device_args(spec: VmSpec) -> list[str]:
    forwards = "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in spec.forwards)
    return [
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22{forwards}",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


def _warm_args(spec: VmSpec) -> list[str]:
    if spec.warm is None:
        return []
    warm = spec.warm
    share = "on" if warm.ram_shared else "off"
    args = [
        "-object", f"memory-backend-file,id={RAM_ID},size={spec.memory_mib}M,mem-path={escape(warm.ram_file)},"
                   f"share={share}",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=agent0,path={escape(warm.agent_socket)},server=on,wait=off",
        "-device", f"virtserialport,chardev=agent0,name={AGENT_PORT}",
        "-device", "vmgenid,guid=auto",
    ]  # fmt: skip
    if warm.incoming:
        args += ["-incoming", "defer"]
    return args
