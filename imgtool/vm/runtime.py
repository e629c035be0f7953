"""Running VMs: start, stop, status, console, ssh.

QEMU runs daemonized with a pid file, a QMP socket and the serial console in a
log file; `state.json` in the VM folder records what this start chose (pid,
accelerator, SSH port). A VM is running when that pid is alive and is a QEMU
process; QMP then says whether the guest is running or paused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blake3

from imgtool.clock import stamp
from imgtool.errors import Corrupt, InvalidArgument, NotFound, Refused, ToolFailed
from imgtool.home import Home
from imgtool.tools import accel, ports, qemu, qmp, run, sockets
from imgtool.tools.ports import free_port
from imgtool.vm import attachments, bases, boot_profile, streaming
from imgtool.vm import state as vmstate
from imgtool.vm.record import VmRecord, is_streaming, load, save, vm_dir
from store import atomic

STATE = vmstate.STATE
SERIAL = "serial.log"


def qmp_socket(folder: Path) -> Path:
    """The VM's QMP socket: in its folder when the path fits a unix socket, else in a private temp dir."""
    candidate = folder / "qmp.sock"
    if sockets.fits(candidate):
        return candidate
    return sockets.private_dir() / f"{blake3.blake3(os.fsencode(folder)).hexdigest()[:20]}.qmp"


_state = vmstate.read
_qemu_alive = vmstate.qemu_alive
is_running = vmstate.is_running


def status(home: Home, name: str) -> dict[str, Any]:
    """Real state from the process and QMP: running, paused, stopped, ..."""
    folder = vm_dir(home, name)
    state = _state(folder)
    streamed = streaming.hydration(home, name)
    if not state or not _qemu_alive(state.pid):
        return {"state": "stopped", "hydration": streamed}
    guest = qmp.query_status(Path(state.qmp))
    return {"state": guest or "unresponsive", **state.to_json(), "hydration": streamed}


def _check_disks(home: Home, record: VmRecord, folder: Path) -> None:
    streaming = is_streaming(home, record.name)
    for disk in record.disks:
        if not (folder / disk.overlay).exists():
            raise NotFound(f"VM '{record.name}' lost its disk {disk.overlay}",
                           hint=f"delete the VM (imgtool vm delete {record.name}) and create it again")
        if not streaming:  # a streamed disk's base does not exist before the version is all local
            bases.check(home, disk.base_disk)  # refuses a damaged base


def stream_socket(folder: Path) -> Path:
    """The stream server's NBD socket: in the VM folder when the path fits, else in a private temp dir."""
    candidate = folder / "stream.sock"
    if sockets.fits(candidate):
        return candidate
    return sockets.private_dir() / f"{blake3.blake3(os.fsencode(folder)).hexdigest()[:20]}.nbd"


def export_name(lun: int | None) -> str:
    """A disk's NBD export (and stream lease, and boot profile) name: "os", or "lunN"."""
    return boot_profile.disk_label(lun)


STREAM_SERVER_TIMEOUT = 600  # judging the version (trust, signatures) and the first index reads


def _start_stream_server(home: Home, name: str) -> None:
    """The stream server (imgtool/stream/serve.py, run by module name: the VM layer does not import the
    flow layer) returns once it has judged the version and listens; it follows QEMU and exits with it."""
    run.run([sys.executable, "-m", "imgtool.stream.serve", "--home", os.fspath(home.root), name],
            timeout=STREAM_SERVER_TIMEOUT)


def spec_for(home: Home, record: VmRecord, *, accel_name: str, port: int,
             served: Path | None = None) -> qemu.VmSpec:
    """`served`: the bases come over NBD from that socket (a boot check recording a profile)."""
    folder = vm_dir(home, record.name)
    sock = served or (stream_socket(folder) if is_streaming(home, record.name) else None)
    drives = tuple(qemu.Drive(folder / d.overlay, "qcow2", stream=qemu.StreamBacking(
        sock, export_name(d.lun)) if sock else None) for d in record.disks)
    seed = folder / record.seed.file if record.seed else None
    code, vars_path = (accel.ovmf_paths()[0], folder / "ovmf-vars.fd") if record.firmware == "uefi" \
        else (None, None)
    return qemu.VmSpec(
        name=record.name, arch=record.arch, cpus=record.cpus, memory_mib=record.memory_mib,
        disks=drives, seed=seed, firmware=record.firmware, ovmf_code=code, ovmf_vars=vars_path,
        accel=accel_name, ssh_port=port, qmp_socket=qmp_socket(folder), serial_log=folder / SERIAL,
        pid_file=folder / "qemu.pid", forwards=tuple((f.host, f.guest) for f in record.forwards))


def _check_forward_ports(record: VmRecord) -> None:
    """A fixed host port that is taken would make QEMU fail with a cryptic hostfwd error."""
    for forward in record.forwards:
        if not ports.is_free(forward.host):
            raise Refused(f"host port 127.0.0.1:{forward.host} (forwarded to guest port {forward.guest}) is in use",
                          hint=f"free that port, then imgtool vm start {record.name}")


def start(home: Home, name: str, *, requested_accel: str | None = None, force: bool = False,
          served: Path | None = None) -> vmstate.RunState:
    """Boot the VM in the background; returns its runtime state. `served`: its bases are read over NBD
    from that socket, whose server the caller runs (imgtool/vm/profile_recording.py).

    A generalized VM is refused unless `force`: its first boot would personalize it again (new
    machine-id, host keys, cloud-init instance). Forced, it stops being generalized.
    """
    record = load(home, name)
    folder = vm_dir(home, name)
    if is_running(home, name):
        raise Refused(f"VM '{name}' is already running", hint=f"imgtool vm console {name}, or vm stop {name}")
    if record.generalized:
        if not force:
            raise Refused(f"VM '{name}' is generalized: booting it would give it an identity again",
                          hint=f"publish it (imgtool publish G/D --os-disk vm:{name} --os-state generalized), "
                               f"or start it anyway with imgtool vm start {name} --force")
        record = dataclasses.replace(record, generalized=False)
        save(home, record)
    _check_disks(home, record, folder)
    _check_forward_ports(record)
    accel_name = accel.choose_accel(home.cache, requested=requested_accel, arch=record.arch)
    log = folder / SERIAL
    if log.exists():
        os.replace(log, folder / f"{SERIAL}.1")  # each boot starts a fresh console log
    _stop_unrecorded_qemu(folder)
    # Decided once: a server that finds every chunk already local names the version and drops stream.json
    # at once, but it keeps serving, and this QEMU's chain goes through it (the base is made at the next start).
    streamed = is_streaming(home, name)
    if streamed:
        _start_stream_server(home, name)
        served = served or stream_socket(folder)
    record = attachments.refresh_seed(home, record)  # peers made since the last start get hosts lines
    extra = attachments.device_argv(home, record)
    for attempt in range(3):
        spec = spec_for(home, record, accel_name=accel_name, port=free_port(), served=served)
        argv = qemu.build_argv(spec, daemonize=True) + extra
        spec.qmp_socket.unlink(missing_ok=True)
        # Each virtiofsd serves one connection: a QEMU that failed has used it up, so each attempt has its own.
        servers = attachments.start_shares(home, record)
        try:
            run.run(argv, timeout=120)
            break
        except ToolFailed as exc:
            attachments.stop_all(servers)
            # The free port may have been taken between our check and QEMU's bind: try another.
            port_clash = "hostfwd" in exc.message or "host forwarding" in exc.message
            if not port_clash or attempt == 2:
                raise
        except BaseException:
            attachments.stop_all(servers)
            raise
    pid = int((folder / "qemu.pid").read_text().strip())
    _attach(home, record, pid, folder)
    state = vmstate.RunState(pid, accel_name, spec.ssh_port, str(spec.qmp_socket), stamp(), tuple(argv),
                             record.forwards)
    atomic.replace(folder / STATE, state.dumps())
    return state


def _stop_unrecorded_qemu(folder: Path) -> None:
    """A start killed after QEMU daemonized but before the state was written leaves a QEMU that no record
    knows (its networks maybe not attached, its forwards unknown) and that holds the pid file's lock,
    so the next start would fail. It is this VM's (its command line names this folder's pid file): stop it."""
    pidfile = folder / "qemu.pid"
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"qemu-system" not in cmdline or os.fsencode(pidfile) not in cmdline:
        return  # the pid is another program's now
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while vmstate.qemu_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _attach(home: Home, record: VmRecord, pid: int, folder: Path) -> None:
    """Network ports for the QEMU just started; if that fails, the VM is stopped again (no half start)."""
    try:
        attachments.attach(home, record, pid)
    except BaseException:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
        raise


@dataclass(frozen=True)
class Stopped:
    was_running: bool
    forced: bool  # the guest did not power down within the timeout: QEMU was ended (like pulling the plug)


def stop(home: Home, name: str, *, timeout: float = 30.0) -> bool:
    """ACPI power-down over QMP, then a hard stop after `timeout` seconds. False if it was not running."""
    return stop_detail(home, name, timeout=timeout).was_running


def stop_detail(home: Home, name: str, *, timeout: float = 30.0) -> Stopped:
    folder = vm_dir(home, name)
    state = _state(folder)
    if not state or not _qemu_alive(state.pid):
        _clear(folder, state)
        return Stopped(False, False)
    pid, sock = state.pid, Path(state.qmp)
    if timeout > 0:
        qmp_safe(qmp.powerdown, sock)
        _wait_gone(pid, timeout)
    forced = _qemu_alive(pid)
    if _qemu_alive(pid):
        qmp_safe(qmp.quit, sock)
        _wait_gone(pid, 5)
    if _qemu_alive(pid):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, 5)
    _clear(folder, state)
    with contextlib.suppress(NotFound, Corrupt):
        attachments.detach(home, load(home, name))  # the switch would notice the exit too; this is at once
    return Stopped(True, forced)


def qmp_safe(action: Callable[[Path], object], sock: Path) -> None:
    with contextlib.suppress(ToolFailed, OSError):
        action(sock)  # if QMP does not answer, the next, harder step follows


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _qemu_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _clear(folder: Path, state: vmstate.RunState | None) -> None:
    # Only what exists: unlink fails with EROFS even for a missing file, and stopping a stopped
    # VM on a read-only home must stay a pure read.
    for path in [folder / STATE, *([Path(state.qmp)] if state and state.qmp else [])]:
        if path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def console_lines(home: Home, name: str, *, follow: bool, timeout: float | None = None) -> Iterator[str]:
    """The serial console, line by line; with follow, keeps reading while the VM runs."""
    load(home, name)
    log = vm_dir(home, name) / SERIAL
    deadline = None if timeout is None else time.monotonic() + timeout
    position = 0
    pending = b""
    while True:
        chunk = b""
        if log.exists():
            with open(log, "rb") as handle:
                handle.seek(position)
                chunk = handle.read()
            position += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
        if not follow or (deadline is not None and time.monotonic() > deadline):
            break
        if not chunk:
            if not is_running(home, name):
                break
            time.sleep(0.2)
    if pending and not follow:
        yield pending.decode("utf-8", "replace")


# CSI (ESC [ ... final), OSC (ESC ] ... BEL/ST), other two-byte ESC sequences (Fp, Fe and Fs: ESC 7, ESC c,
# the reset SeaBIOS starts with), and C0 controls but tab.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[0-~]?|[\x00-\x08\x0b-\x1f\x7f]")


def plain(line: str) -> str:
    """A console line without terminal control sequences (colours, cursor moves, title changes)."""
    return _CONTROL.sub("", line)


def wait_for(home: Home, name: str, text: str, *, timeout: float) -> str:
    """Follow the console until a line contains `text`; ToolFailed on timeout or VM exit."""
    running = is_running(home, name)
    for line in console_lines(home, name, follow=running, timeout=timeout):
        if text in plain(line):
            return line
    if not running:
        raise Refused(f"VM '{name}' is not running, and its console log has no line with {text!r}",
                      hint=f"start it and wait: imgtool vm start {name}, then imgtool vm console {name} --until "
                           f"{text!r}")
    if not is_running(home, name):
        raise ToolFailed(f"VM '{name}' stopped before printing {text!r}",
                         hint=f"read its console: imgtool vm console {name}")
    raise ToolFailed(f"VM '{name}' did not print {text!r} within {timeout:g}s",
                     hint=f"read its console: imgtool vm console {name}, or wait longer with --timeout")


KNOWN_HOSTS = "known_hosts"


def wait_ssh(home: Home, name: str, *, timeout: float, waiting: Callable[[int], None] | None = None) -> int:
    """Wait (bounded) until the VM's SSH answers; returns its port. `waiting(port)` is called once,
    if it does not answer at once."""
    deadline = time.monotonic() + timeout
    told = False
    while True:
        state = vmstate.running_state(home, name)
        if state is None:
            load(home, name)
            raise Refused(f"VM '{name}' is not running", hint=f"start it: imgtool vm start {name}")
        port = state.ssh_port
        if ports.ssh_answers(port, timeout=max(min(5.0, deadline - time.monotonic()), 0.5)):
            return port
        if not told and waiting is not None:
            waiting(port)
            told = True
        if time.monotonic() >= deadline:
            raise ToolFailed(f"nothing answers SSH on 127.0.0.1:{port} (VM '{name}') after {timeout:g}s",
                             hint=f"the guest may still be booting or has no SSH server: read its console "
                                  f"(imgtool vm console {name}), or wait longer with --wait")
        time.sleep(1.0)


def ssh_argv(home: Home, name: str, extra: list[str], *, port: int | None = None) -> list[str]:
    """ssh with the VM's port, user and key; its host key is remembered in the VM's own known_hosts
    (under an alias, so it survives the port changing at each start)."""
    record = load(home, name)
    state = _state(vm_dir(home, name))
    if not state or not _qemu_alive(state.pid):
        raise Refused(f"VM '{name}' is not running", hint=f"start it: imgtool vm start {name}")
    port = port or state.ssh_port
    user = record.seed.admin_user if record.seed else None
    if not user:
        raise InvalidArgument(f"VM '{name}' has no provisioned user (specialized image)",
                              hint=f"use the source image's own accounts: ssh -p {port} USER@127.0.0.1")
    argv = ["ssh", "-p", str(port), "-o", f"HostKeyAlias=imgtool-vm-{name}",
            "-o", f"UserKnownHostsFile={vm_dir(home, name) / KNOWN_HOSTS}", "-o", "StrictHostKeyChecking=accept-new",
            "-o", "LogLevel=ERROR"]
    key = record.seed.ssh_key if record.seed else None
    if key and key.endswith(".pub") and Path(key[:-4]).exists():
        argv += ["-i", key[:-4]]
    return [*argv, f"{user}@127.0.0.1", *extra]


def restart(home: Home, name: str, *, timeout: float = 30.0, requested_accel: str | None = None) -> \
        tuple[Stopped, vmstate.RunState]:
    """Stop (if running) and start again, with the record as it is now (after vm update, say)."""
    load(home, name)
    stopped = stop_detail(home, name, timeout=timeout)
    return stopped, start(home, name, requested_accel=requested_accel)
