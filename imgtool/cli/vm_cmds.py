"""imgtool vm …"""

import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from imgtool.cli.output import ProgressBar, State, emit_json, fields, state, table, warn
from imgtool.cli.vm_attach import SHARE_HELP, attachment_fields, parse_shares
from imgtool.errors import InvalidArgument
from imgtool.flows import shapes
from imgtool.flows.shapes import human_bytes
from imgtool.home import Home
from imgtool.vm.record import VmRecord, is_streaming, load
from imgtool.vm.state import RunState

if TYPE_CHECKING:
    from imgtool.vm.lifecycle import NewVm
    from imgtool.vm.runtime import Stopped

vm_app = typer.Typer(help="VMs: copy-on-write qcow2 overlays over a version's disks, booted under QEMU.",
                     no_args_is_help=True)
class _SnapshotGroup(TyperGroup):
    """`vm snapshot VM SNAP` (the form before the group existed) still means `vm snapshot create VM SNAP`."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if len(args) >= 2 and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["create", *args]
        return super().resolve_command(ctx, args)


snapshot_app = typer.Typer(help="Snapshots of a stopped VM's disks: create, list, restore, delete; capture or "
                           "publish one as snapshot:VM/SNAP. (`vm snapshot VM SNAP` is short for create.)",
                           no_args_is_help=True, cls=_SnapshotGroup)
vm_app.add_typer(snapshot_app, name="snapshot")
Opt = typer.Option
Arg = typer.Argument


def _ssh_line(name: str, runtime: RunState) -> str:
    forwards = "".join(f", {f}" for f in runtime.forwards)
    return (f"started VM {name} ({runtime.accel}): ssh on 127.0.0.1:{runtime.ssh_port}{forwards}; "
            f"log in with: imgtool vm ssh {name}")


def _got(record: VmRecord) -> list[str]:
    """What vm new gave the VM, one fact per line (each fits 80 columns for plausible values)."""
    os_disk = record.disk(None)
    data = len(record.disks) - 1
    lines = [f"{record.cpus} vCPUs, {record.memory_mib} MiB memory, OS disk "
             f"{human_bytes(os_disk.virtual_size) if os_disk else '-'}"
             + (f", {data} data disk{'s' if data > 1 else ''}" if data else "")]
    lines += [f"forward {f}" for f in record.forwards]
    if record.seed is None:
        lines.append("login: the image's own accounts (a specialized image)")
    else:
        key = record.seed.ssh_key
        lines.append(f"login: user {record.seed.admin_user}" + (f", key {key}" if key else ", no SSH key"))
    return lines


def _local_image(st: State, image: str) -> str:
    """The local G/D@X.Y.Z for `vm new --image` (imgtool.flows.images pulls and verifies), warnings shown."""
    from imgtool.flows.images import image_for_vm, is_remote_image

    bar = ProgressBar(f"pulling {image}", enabled=not st.json and is_remote_image(image))
    try:
        found = image_for_vm(st.home, image, progress=bar)
    finally:
        bar.close()
    warn(found.warnings)
    return found.ref


@vm_app.command("new")
def vm_new(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="VM name.")],
    image: Annotated[str, Opt(help="GALLERY/DEFINITION[@X.Y.Z|@latest], or REMOTE:GALLERY/DEFINITION[@…] "
                                   "(pulled first: only missing chunks travel)")],
    cpus: Annotated[int | None, Opt(help="vCPUs (default: 2, within the definition's recommendation).")] = None,
    memory: Annotated[int | None, Opt(help="Memory in MiB (default: 512, within the recommendation).")] = None,
    disk_size: Annotated[str | None, Opt(metavar="SIZE", help="Grow the OS disk to SIZE (e.g. 20G); cloud-init "
                                                              "in the guest grows its filesystem.")] = None,
    forward: Annotated[list[str] | None, Opt(metavar="HOST:GUEST", help="Also forward 127.0.0.1:HOST to the "
                                                                        "guest's port GUEST (repeatable).")] = None,
    share: Annotated[list[str] | None, Opt(metavar="HOST_DIR:GUEST_PATH[:ro]", help=SHARE_HELP)] = None,
    network: Annotated[list[str] | None, Opt(metavar="NAME[:ADDRESS]", help="Add a NIC on imgtool network NAME "
                                                                          "(see imgtool network; repeatable).")] = None,
    hostname: Annotated[str | None, Opt(help="Generalized images: the VM's hostname (default: its name).")] = None,
    admin_user: Annotated[str | None, Opt(help="Generalized images: the admin user to create.")] = None,
    ssh_key: Annotated[Path | None, Opt(help="Generalized images: public key for the admin user "
                                              "(default: ~/.ssh/id_*.pub).")] = None,
    user_data: Annotated[Path | None, Opt(help="Generalized images: your own cloud-init user-data, merged.")] = None,
    ignore_recommendations: Annotated[bool, Opt(help="Allow vCPUs/memory outside the recommended ranges.")] = False,
    allow_revoked: Annotated[bool, Opt(help="Allow a revoked version (recorded on the VM).")] = False,
    start: Annotated[bool, Opt(help="Start it right away.")] = False,
    accel: Annotated[str | None, Opt(help="With --start: kvm or tcg (default: probe).")] = None,
    wait: Annotated[bool, Opt(help="With --start: return once SSH accepts the seeded key (see vm wait).")] = False,
    wait_timeout: Annotated[float, Opt(help="With --wait: give up after this many seconds.")] = 600.0,
    stream: Annotated[bool | None, Opt("--stream/--no-stream", help="REMOTE images: boot while the chunks arrive "
                                     "(judged as pull judges it first); the VM's next start after hydration uses "
                                     "a local base. Default: stream with --start, pull first without.")] = None,
    hydrate: Annotated[str, Opt(metavar="MODE", help="With --stream: background (fetch everything) or "
                                                     "on-demand (only what the guest reads).")] = "background",
    warm: Annotated[bool, Opt(help="Restore the VM from the version's warm state of its size (imgtool version "
                                   "warm) and personalize it: it is running afterwards, as with --start.")] = False,
    cold: Annotated[bool, Opt(help="With --start: boot, even when the version has a warm state that fits (a plain "
                                   "--start restores from it unless --disk-size, --user-data, --share or "
                                   "--network is given).")] = False,
) -> None:
    """Create a VM from an image version: one qcow2 overlay per disk over a shared read-only base, and a
    cloud-init NoCloud seed for generalized images. The version's digest is pinned in the VM's record."""
    from imgtool.vm import attachments, options
    from imgtool.vm import lifecycle as vm
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    start = start or warm  # a warm VM is restored running
    if accel is not None:
        _check_accel(accel)
        if not start:
            raise InvalidArgument("--accel applies when the VM starts", hint=f"add --start, or give it to "
                                                                               f"imgtool vm start {name} --accel")
    if wait and not start:
        raise InvalidArgument("--wait applies when the VM starts", hint=f"imgtool vm new {name} ... --start --wait")
    if cold and (warm or not start):
        raise InvalidArgument("--cold applies to a VM that starts, and not with --warm",
                              hint=f"imgtool vm new {name} ... --start --cold")
    disk_bytes = None if disk_size is None else options.parse_size(disk_size)
    forwards = options.check_forwards(tuple(options.parse_forward(f) for f in forward or []))
    request = vm.NewVm(name=name, image=image, cpus=cpus, memory_mib=memory, hostname=hostname,
                       admin_user=admin_user, ssh_key=ssh_key, user_data=user_data,
                       ignore_recommendations=ignore_recommendations, allow_revoked=allow_revoked,
                       disk_size=disk_bytes, forwards=forwards, shares=parse_shares(share),
                       networks=tuple(map(attachments.parse_network, network or [])))
    streaming = stream if stream is not None else (start and not warm and _is_remote(image))
    if warm:
        if stream:
            raise InvalidArgument("--warm and --stream cannot be combined", hint="a warm state is made from a "
                                  "local version: pull it first (imgtool pull), then imgtool version warm")
        _new_warm(st, dataclasses.replace(request, image=_local_image(st, image)), accel=accel,
                  wait_timeout=wait_timeout if wait else None)
        return
    record = _new_streamed(st, request, stream=streaming, hydrate=hydrate)
    verified = None
    if record is None and start and not cold and not streaming and not _is_remote(image):
        verified = dataclasses.replace(request, image=_local_image(st, image))  # checked as for any VM
        if _warm_by_default(st, verified, accel):
            _new_warm(st, verified, accel=accel, wait_timeout=wait_timeout if wait else None)
            return
    warnings: list[str] = []
    if record is None:
        request = verified or dataclasses.replace(request, image=_local_image(st, image))
        bar = ProgressBar(f"preparing {name}", enabled=not st.json)
        try:
            record = vm.create(st.home, request, progress=bar)
        finally:
            bar.close()
        warnings = vm.advice(st.home, record, request)
    runtime = vmrun.start(st.home, name, requested_accel=accel) if start else None
    if wait:
        from imgtool.cli.guest_cmds import wait_ready
        wait_ready(st, name, timeout=wait_timeout, cloud_init=False)
    if st.json:
        emit_json(shapes.vm_of(st.home, name, warnings=warnings))
        return
    print(f"created VM {name} from {record.image}")
    if streaming and is_streaming(st.home, name):
        print(f"  streamed from {image} ({hydrate} hydration): progress in imgtool vm show {name}")
    for line in _got(record):
        print(f"  {line}")
    warn(warnings)
    if runtime:
        print(_ssh_line(name, runtime))
    else:
        print(f"start it with: imgtool vm start {name}")


def _new_streamed(st: State, request: "NewVm", *, stream: bool, hydrate: str) -> VmRecord | None:
    """`vm new --stream`: the VM over a remote version not pulled yet; None when there is nothing to stream."""
    from imgtool.flows import images

    if not stream:
        if hydrate != "background":
            raise InvalidArgument("--hydrate applies to a streamed VM",
                                  hint="add --start (a remote image streams then) or --stream")
        return None
    if not images.is_remote_image(request.image):
        raise InvalidArgument("--stream applies to a remote image (REMOTE:GALLERY/DEFINITION[@X.Y.Z])",
                              hint=f"drop --stream: {request.image} is local already")
    from imgtool.stream import vms as streamed

    return streamed.new_streamed(st.home, request, mode=hydrate)


@vm_app.command("hydrate")
def vm_hydrate(
    ctx: typer.Context,
    name: str,
    wait: Annotated[bool, Opt(help="Return once every chunk is local and the version has its local name.")] = False,
) -> None:
    """Fetch every chunk a streamed VM's version still lacks (also for a VM made with --hydrate on-demand)."""
    from imgtool.stream import vms as streamed

    st = state(ctx)
    found = streamed.hydrate(st.home, name, wait=wait)
    if st.json:
        emit_json({"name": name, "hydration": found})
        return
    print(f"VM {name}: {_hydration_line(found)}")


@vm_app.command("resume")
def vm_resume(ctx: typer.Context, name: str) -> None:
    """Resume a VM paused on a read error (a streamed chunk the remote did not give in time)."""
    from imgtool.stream import vms as streamed

    st = state(ctx)
    now = streamed.resume(st.home, name)
    if st.json:
        emit_json(shapes.vm_of(st.home, name))
        return
    print(f"VM {name} is {now}")


def _hydration_line(found: dict[str, Any] | None) -> str:
    if not found:
        return "not streamed"
    line = f"{found['state']}"
    if found.get("bytes_total"):
        line += f", {human_bytes(found.get('bytes_local') or 0)} of {human_bytes(found['bytes_total'])} local"
    if found.get("rate_bytes_per_second"):
        line += f", {human_bytes(found['rate_bytes_per_second'])}/s"
    if found.get("eta_seconds"):
        line += f", about {found['eta_seconds']} s left"
    if found.get("profile_chunks"):
        line += f", boot profile {found.get('prefetched_chunks') or 0} of {found['profile_chunks']} chunks prefetched"
    if found.get("state") == "paused-waiting-for-remote":
        line += f" (paused: waiting for {found.get('remote')}; imgtool vm resume NAME)"
    if found.get("state") == "paused-disk-full":
        line += " (paused: the local store's disk is full; free space, e.g. imgtool gc, and it resumes by itself)"
    return line


def _is_remote(image: str) -> bool:
    from imgtool.flows.images import is_remote_image

    return is_remote_image(image)


def _warm_by_default(st: State, request: "NewVm", accel: str | None) -> bool:
    """A local, verified version with a warm state that fits: restore rather than boot (measured:
    docs/BENCHMARKS.md)."""
    from imgtool.cli import warm_cmds

    choice = warm_cmds.choose_warm(st.home, request, accel=accel)
    if choice.note:
        warn([choice.note])
    return choice.warm


def _new_warm(st: State, request: "NewVm", *, accel: str | None, wait_timeout: float | None) -> None:
    from imgtool.cli import warm_cmds

    started = warm_cmds.new_warm(st.home, request, accel=accel)
    if wait_timeout is not None:
        from imgtool.cli.guest_cmds import wait_ready
        wait_ready(st, request.name, timeout=wait_timeout, cloud_init=False)
    if st.json:
        emit_json(shapes.vm_of(st.home, request.name, warm=started.to_json()))
        return
    print(f"created VM {request.name} from {started.record.image}, restored warm in {started.restore_seconds:.1f}s "
          f"and personalized in {started.personalize_seconds:.1f}s")
    for line in _got(started.record):
        print(f"  {line}")
    print(_ssh_line(request.name, started.runtime))


@vm_app.command("update")
def vm_update(
    ctx: typer.Context,
    name: str,
    cpus: Annotated[int | None, Opt(help="New vCPU count (within the definition's recommendation).")] = None,
    memory: Annotated[int | None, Opt(help="New memory in MiB (within the recommendation).")] = None,
    ignore_recommendations: Annotated[bool, Opt(help="Allow values outside the recommended ranges.")] = False,
    share: Annotated[list[str] | None, Opt(metavar="HOST_DIR:GUEST_PATH[:ro]", help=SHARE_HELP + " Replaces the "
                                                                                   "VM's shares.")] = None,
    no_shares: Annotated[bool, Opt("--no-shares", help="Remove every share.")] = False,
    forward: Annotated[list[str] | None, Opt(metavar="HOST:GUEST", help="Forward 127.0.0.1:HOST to the guest's "
                                             "port GUEST, as in vm new (repeatable; replaces the forwards).")] = None,
    no_forwards: Annotated[bool, Opt("--no-forwards", help="Remove every extra forward (SSH's stays).")] = False,
    disk_size: Annotated[str | None, Opt(metavar="SIZE", help="Grow the OS disk to SIZE (e.g. 20G; never "
                                                              "shrinks); the guest grows its file system.")] = None,
) -> None:
    """Change a stopped VM's vCPUs, memory, shared folders, port forwards or OS disk size (takes effect at its
    next start)."""
    from imgtool.cli import vm_settings_cmds

    st = state(ctx)
    if share and no_shares:
        raise InvalidArgument("--share and --no-shares contradict each other", hint="give one of them")
    shares = () if no_shares else (parse_shares(share) if share else None)
    record = vm_settings_cmds.update(st.home, name, cpus=cpus, memory=memory, shares=shares, forward=forward,
                                     no_forwards=no_forwards, disk_size=disk_size,
                                     ignore_recommendations=ignore_recommendations)
    if st.json:
        emit_json(shapes.vm_of(st.home, name))
        return
    print(f"updated VM {name}: {record.cpus} vCPUs, {record.memory_mib} MiB memory, "
          f"{len(record.shares)} share{'' if len(record.shares) == 1 else 's'}"
          + "".join(f"; {line}" for line in vm_settings_cmds.changed_lines(record, forward, no_forwards, disk_size)))


@vm_app.command("start")
def vm_start(
    ctx: typer.Context,
    name: str,
    accel: Annotated[str | None, Opt(help="kvm or tcg (default: KVM only if a probe proves it works).")] = None,
    console: Annotated[bool, Opt(help="Then follow the serial console (Ctrl-C detaches).")] = False,
    force: Annotated[bool, Opt(help="Start a generalized VM anyway (it stops being generalized).")] = False,
) -> None:
    """Boot a VM in the background (pid file, QMP socket, serial log, SSH on a loopback port). Warns when its
    version is revoked."""
    from imgtool.gallery import revocation
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    if accel is not None:
        _check_accel(accel)
    warnings = revocation.start_warnings(st.home, name)
    warn(warnings)
    runtime = vmrun.start(st.home, name, requested_accel=accel, force=force)
    if st.json:
        emit_json(shapes.vm_of(st.home, name, warnings=warnings))
    else:
        print(_ssh_line(name, runtime))
    if console and not st.json:
        _follow(st.home, name, None, None, raw=False)


def _stopped(st: State, name: str, stopped: "Stopped", timeout: float) -> None:
    if stopped.forced:
        warn([f"VM {name} did not power down within {timeout:g}s and was stopped hard (like pulling the plug); "
              "give the guest more time with --timeout"])


@vm_app.command("stop")
def vm_stop(
    ctx: typer.Context,
    name: str,
    timeout: Annotated[float, Opt(help="Seconds to wait after ACPI power-down before a hard stop.")] = 30.0,
) -> None:
    """Stop a VM: ACPI power-down over QMP, hard stop after the timeout."""
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    _check_timeout(timeout)
    load(st.home, name)
    stopped = vmrun.stop_detail(st.home, name, timeout=timeout)
    if st.json:
        emit_json(shapes.vm_of(st.home, name, was_running=stopped.was_running, forced=stopped.forced))
        return
    print(f"stopped VM {name}" if stopped.was_running else f"VM {name} was not running")
    _stopped(st, name, stopped, timeout)


def _check_accel(accel: str) -> None:
    from imgtool.tools.qemu import ACCELS

    if accel not in ACCELS:
        raise InvalidArgument(f"--accel {accel} is not one of {', '.join(ACCELS)}", hint="e.g. --accel tcg")


def _check_timeout(timeout: float) -> None:
    if not 0 <= timeout <= 86400:  # also refuses NaN
        raise InvalidArgument(f"--timeout {timeout:g} is not 0..86400 seconds", hint="e.g. --timeout 30")


@vm_app.command("restart")
def vm_restart(
    ctx: typer.Context,
    name: str,
    timeout: Annotated[float, Opt(help="Seconds to wait after ACPI power-down before a hard stop.")] = 30.0,
    accel: Annotated[str | None, Opt(help="kvm or tcg (default: probe).")] = None,
) -> None:
    """Stop the VM (if running) and start it again, with its current settings (see vm update)."""
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    _check_timeout(timeout)
    if accel is not None:
        _check_accel(accel)
    stopped, runtime = vmrun.restart(st.home, name, timeout=timeout, requested_accel=accel)
    if st.json:
        emit_json(shapes.vm_of(st.home, name, was_running=stopped.was_running, forced=stopped.forced))
        return
    _stopped(st, name, stopped, timeout)
    print(_ssh_line(name, runtime).replace("started", "restarted", 1))


@vm_app.command("list")
def vm_list(ctx: typer.Context) -> None:
    """List VMs with their real state (from the process and QMP); VMs on a revoked version say so."""
    from imgtool.gallery import revocation
    from imgtool.vm import lifecycle as vm
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    rows: list[dict[str, Any]] = []
    for name in vm.list_names(st.home):
        try:
            record = load(st.home, name)
        except Exception:  # an unfinished vm new: show it, gc will remove it
            rows.append(shapes.incomplete_vm(name))
            continue
        rows.append(shapes.vm(record, vmrun.status(st.home, name)))
    flags = revocation.vm_flags(st.home, {r["name"]: r["image"] for r in rows if r["image"]})
    for row in rows:
        row["revoked"] = flags[row["name"]].to_json() if row["name"] in flags else None
    if st.json:
        emit_json(rows)
        return
    table(["name", "image", "state", "cpus", "memory", "ssh"],
          [[r["name"], r["image"], r["state"], r["cpus"], r["memory_mib"] and f"{r['memory_mib']} MiB",
            r["ssh_port"] and f"127.0.0.1:{r['ssh_port']}"] for r in rows])
    for row in rows:
        if row["revoked"]:
            print(f"{row['name']}: revoked since {row['revoked']['when']}: {row['revoked']['reason']}")


@vm_app.command("show")
def vm_show(ctx: typer.Context, name: str) -> None:
    """Show a VM's receipt (version digest, definition, seed digest), state and last QEMU command line."""
    from imgtool.gallery import revocation
    from imgtool.vm import lifecycle as vm
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    record = load(st.home, name)
    status = vmrun.status(st.home, name)
    revoked = revocation.revocation_of(st.home, record.image)
    snaps = [s["name"] for s in vm.list_snapshots(st.home, name)]
    hydration = status.get("hydration")
    if st.json:
        emit_json({**shapes.vm(record, status), "qemu_argv": status.get("qemu_argv"), "snapshots": snaps,
                   "revoked": revoked and revoked.to_json()})
        return
    seed = record.seed
    fields([("name", name), ("image", record.image), ("version record", record.version_digest),
            ("os state", record.os_state), ("state", status["state"]),
            ("hydration", hydration and _hydration_line(hydration)), ("accel", status.get("accel")),
            ("address", "127.0.0.1" if status.get("ssh_port") else "none while stopped"),
            ("ports", [_port_text(p) for p in shapes.vm_address(record, status)["ports"]]),
            ("ssh", status.get("ssh_port") and f"127.0.0.1:{status['ssh_port']}"),
            ("forwards", [str(f) for f in record.forwards]), ("cpus", record.cpus),
            ("memory", f"{record.memory_mib} MiB"), ("firmware", record.firmware),
            ("disks", [f"{d.overlay} ({human_bytes(d.virtual_size)})" for d in record.disks]),
            ("seed", seed and seed.digest), ("hostname", seed and seed.hostname),
            ("admin user", seed and seed.admin_user), ("snapshots", snaps), ("created", record.created),
            ("updated", record.updated),
            ("generalized", "yes (vm start needs --force)" if record.generalized else "no"),
            ("revoked", revoked and f"{revoked.reason} (since {revoked.when})"),
            ("allowed revoked", record.allowed_revoked),
            *attachment_fields(record),
            ("qemu", " ".join(status["qemu_argv"]) if status.get("qemu_argv") else None)])


def _port_text(port: dict[str, Any]) -> str:
    if port["host"] is None:
        return f"{port['guest']} (ssh: its host port is chosen at start)"
    return f"127.0.0.1:{port['host']}->{port['guest']}" + (" (ssh)" if port["purpose"] == "ssh" else "")


def _follow(home: Home, name: str, until: str | None, timeout: float | None, *, raw: bool,
            lines: list[str] | None = None) -> str | None:
    """Print the console as it comes (or, with `lines`, collect it there); returns the --until line."""
    from imgtool.vm import runtime as vmrun

    show = (lambda line: line) if raw else vmrun.plain
    say = (lambda line: print(line, flush=True)) if lines is None else lines.append
    if until:
        found = show(vmrun.wait_for(home, name, until, timeout=timeout or 300))
        say(found)
        return found
    if not vmrun.is_running(home, name):
        sys.stderr.write(f"imgtool: VM {name} is not running; its last console log follows\n")
    try:
        for line in vmrun.console_lines(home, name, follow=True, timeout=timeout):
            say(show(line))
    except KeyboardInterrupt:
        sys.stderr.write("\ndetached from the console; the VM keeps running\n")
    return None


@vm_app.command("console")
def vm_console(
    ctx: typer.Context,
    name: str,
    follow: Annotated[bool, Opt("--follow", "-f", help="Keep printing while the VM runs.")] = False,
    until: Annotated[str | None, Opt(help="Follow until a line contains this text; print that line.")] = None,
    timeout: Annotated[float | None, Opt(help="Give up after this many seconds (with --follow/--until).")] = None,
    raw: Annotated[bool, Opt("--raw", help="Keep terminal control sequences (colours, cursor moves).")] = False,
) -> None:
    """Print (or follow) the VM's serial console log, without terminal control sequences unless --raw.
    With --json: one document with the VM's name, the console lines and the line --until waited for."""
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    if timeout is not None:
        _check_timeout(timeout)
        if not (follow or until):
            raise InvalidArgument("--timeout applies with --follow or --until",
                                  hint=f"e.g. imgtool vm console {name} --until READY --timeout 300")
    collected: list[str] | None = [] if st.json else None
    match = None
    if follow or until:
        match = _follow(st.home, name, until, timeout, raw=raw, lines=collected)
    else:
        for line in vmrun.console_lines(st.home, name, follow=False):
            shown = line if raw else vmrun.plain(line)
            print(shown) if collected is None else collected.append(shown)
    if collected is not None:
        emit_json({"vm": name, "lines": collected, "match": match})


@vm_app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_ssh(
    ctx: typer.Context,
    name: str,
    wait: Annotated[float, Opt(help="Seconds to wait for the guest's SSH server to answer.")] = 120.0,
) -> None:
    """Run ssh into the VM with the right port, user and key (extra arguments go to ssh). Waits for SSH to
    answer; the VM's host key is remembered in its folder (known_hosts)."""
    from imgtool.tools import run
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    _check_timeout(wait)
    vmrun.ssh_argv(st.home, name, [])  # refuses a stopped or user-less VM before any wait

    def waiting(port: int) -> None:
        sys.stderr.write(f"waiting up to {wait:g}s for SSH on 127.0.0.1:{port} to answer (VM {name})...\n")

    port = vmrun.wait_ssh(st.home, name, timeout=wait, waiting=waiting)
    run.exec_replace(vmrun.ssh_argv(st.home, name, list(ctx.args), port=port))


@snapshot_app.command("create")
def snapshot_create(ctx: typer.Context, name: Annotated[str, Arg(help="VM name.")],
                    snap: Annotated[str, Arg(help="Snapshot name.")]) -> None:
    """Snapshot a stopped VM's disks; capture or publish it later as snapshot:NAME/SNAP."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    vm.snapshot(st.home, name, snap)
    if st.json:
        emit_json(next(s for s in vm.list_snapshots(st.home, name) if s["name"] == snap))
        return
    print(f"snapshot {name}/{snap} taken; capture or publish it as snapshot:{name}/{snap}")


@snapshot_app.command("list")
def snapshot_list(ctx: typer.Context, name: Annotated[str, Arg(help="VM name.")]) -> None:
    """List a VM's snapshots, oldest first."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    found = vm.list_snapshots(st.home, name)
    if st.json:
        emit_json(found)
        return
    table(["snapshot", "created", "disks", "stored"],
          [[s["name"], s["created"], len(s["disks"]), human_bytes(s["stored_bytes"])] for s in found])


@snapshot_app.command("restore")
def snapshot_restore(ctx: typer.Context, name: Annotated[str, Arg(help="VM name.")],
                     snap: Annotated[str, Arg(help="Snapshot name.")]) -> None:
    """Put a stopped VM's disks back as they were at the snapshot (later writes are lost; the snapshot stays)."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    vm.restore_snapshot(st.home, name, snap)
    emit_json({"restored": f"snapshot:{name}/{snap}", "vm": name}) if st.json else \
        print(f"restored VM {name} to snapshot {snap}")


@snapshot_app.command("delete")
def snapshot_delete(ctx: typer.Context, name: Annotated[str, Arg(help="VM name.")],
                    snap: Annotated[str, Arg(help="Snapshot name.")]) -> None:
    """Delete a snapshot."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    vm.delete_snapshot(st.home, name, snap)
    emit_json({"deleted": f"snapshot:{name}/{snap}"}) if st.json else print(f"deleted snapshot {name}/{snap}")


@vm_app.command("delete")
def vm_delete(ctx: typer.Context, name: str) -> None:
    """Delete a VM: stop it, remove its files and its snapshots, release its hold on the version."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    snaps = vm.delete(st.home, name)
    if st.json:
        emit_json({"deleted": name, "snapshots_deleted": snaps})
        return
    dropped = f" and its {len(snaps)} snapshot{'s' if len(snaps) != 1 else ''} ({', '.join(snaps)})" if snaps else ""
    print(f"deleted VM {name}{dropped}")

