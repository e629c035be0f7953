"""imgtool vm …"""

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, fields, state, table, warn
from imgtool.errors import InvalidArgument
from imgtool.vm.record import VmRecord, load, vm_dir

vm_app = typer.Typer(help="VMs: copy-on-write qcow2 overlays over a version's disks, booted under QEMU.",
                     no_args_is_help=True)
Opt = typer.Option
Arg = typer.Argument


def _public(record: VmRecord) -> dict[str, Any]:
    """The receipt as shown, without the embedded definition record (version show has it). The receipt
    holds no key material or user-data: those are only in the seed, mode 0600."""
    return {k: v for k, v in record.to_json().items() if k not in ("definition", "format", "kind")}


def _local_image(st: Any, image: str) -> str:
    """REMOTE:G/D[@V] is pulled (what is missing) and becomes the local G/D@X.Y.Z; a pulled version is
    re-verified from the local store (signature, manifest and config chain, chunks present) every time."""
    from imgtool.remote import service
    from imgtool.trust import gate

    warnings: tuple[str, ...] | list[str] = ()
    if service.is_remote_image(image):
        bar = ProgressBar(f"pulling {image}", enabled=not st.json)
        try:
            pulled = service.pull_ref(st.home, image, progress=bar)
        finally:
            bar.close()
        image, warnings = pulled.name, pulled.warnings
    verdict = gate.verify_local(st.home, image, deep=False)
    warn(warnings or (verdict.acceptance.warnings if verdict else ()))
    return image


@vm_app.command("new")
def vm_new(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="VM name.")],
    image: Annotated[str, Opt(help="GALLERY/DEFINITION[@X.Y.Z|@latest], or REMOTE:GALLERY/DEFINITION[@…] "
                                   "(pulled first: only missing chunks travel)")],
    cpus: Annotated[int | None, Opt(help="vCPUs (default: 2, within the definition's recommendation).")] = None,
    memory: Annotated[int | None, Opt(help="Memory in MiB (default: 512, within the recommendation).")] = None,
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
) -> None:
    """Create a VM from an image version: one qcow2 overlay per disk over a shared read-only base, and a
    cloud-init NoCloud seed for generalized images. The version's digest is pinned in the VM's record."""
    from imgtool.vm import lifecycle as vm
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    image = _local_image(st, image)
    request = vm.NewVm(name=name, image=image, cpus=cpus, memory_mib=memory, hostname=hostname,
                       admin_user=admin_user, ssh_key=ssh_key, user_data=user_data,
                       ignore_recommendations=ignore_recommendations, allow_revoked=allow_revoked)
    bar = ProgressBar(f"preparing {name}", enabled=not st.json)
    try:
        record = vm.create(st.home, request, progress=bar)
    finally:
        bar.close()
    runtime = vmrun.start(st.home, name, requested_accel=accel) if start else None
    if wait and runtime is None:
        raise InvalidArgument("--wait needs --start", hint=f"imgtool vm new {name} ... --start --wait")
    if wait:
        from imgtool.cli.guest_cmds import wait_ready
        wait_ready(st, name, timeout=wait_timeout, cloud_init=False)
    if st.json:
        emit_json({**_public(record), "runtime": runtime})
        return
    print(f"created VM {name} from {record.image}")
    if runtime:
        print(f"started VM {name} ({runtime['accel']}, ssh on 127.0.0.1:{runtime['ssh_port']})")


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
    warnings = revocation.start_warnings(st.home, name)
    for warning in warnings:
        sys.stderr.write(f"imgtool: warning: {warning}\n")
    runtime = vmrun.start(st.home, name, requested_accel=accel, force=force)
    if st.json:
        emit_json({**runtime, "warnings": warnings})
    else:
        print(f"started VM {name} ({runtime['accel']}, ssh on 127.0.0.1:{runtime['ssh_port']})")
    if console:
        _follow(st.home, name, None, None)


@vm_app.command("stop")
def vm_stop(
    ctx: typer.Context,
    name: str,
    timeout: Annotated[float, Opt(help="Seconds to wait after ACPI power-down before a hard stop.")] = 30.0,
) -> None:
    """Stop a VM: ACPI power-down over QMP, hard stop after the timeout."""
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    load(st.home, name)
    stopped = vmrun.stop(st.home, name, timeout=timeout)
    if st.json:
        emit_json({"name": name, "was_running": stopped})
    else:
        print(f"stopped VM {name}" if stopped else f"VM {name} was not running")


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
            rows.append({"name": name, "state": "incomplete"})
            continue
        status = vmrun.status(st.home, name)
        rows.append({"name": name, "image": record.image, "state": status["state"], "cpus": record.cpus,
                     "memory_mib": record.memory_mib, "ssh_port": status.get("ssh_port"),
                     "accel": status.get("accel")})
    flags = revocation.vm_flags(st.home, {r["name"]: r["image"] for r in rows if "image" in r})
    for row in rows:
        row["revoked"] = flags[row["name"]].reason if row["name"] in flags else None
    if st.json:
        emit_json(rows)
        return
    table(["name", "image", "state", "cpus", "memory", "ssh"],
          [[r["name"], r.get("image"), r["state"], r.get("cpus"), r.get("memory_mib") and f"{r['memory_mib']} MiB",
            r.get("ssh_port") and f"127.0.0.1:{r['ssh_port']}"] for r in rows])
    for row in rows:
        if row["revoked"]:
            print(f"{row['name']}: revoked: {row['revoked']}")


@vm_app.command("show")
def vm_show(ctx: typer.Context, name: str) -> None:
    """Show a VM's receipt (version digest, definition, seed digest, QEMU command line) and state."""
    from imgtool.gallery import revocation
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    record = load(st.home, name)
    status = vmrun.status(st.home, name)
    revoked = revocation.revocation_of(st.home, record.image)
    snaps = sorted(p.name for p in (vm_dir(st.home, name) / "snapshots").glob("*")
                   if not p.name.startswith("."))
    if st.json:
        emit_json({**_public(record), "status": {k: v for k, v in status.items() if k != "qemu_argv"},
                   "qemu_argv": status.get("qemu_argv"), "snapshots": snaps,
                   "revoked": revoked and revoked.to_json()})
        return
    seed = record.seed
    fields([("name", name), ("image", record.image), ("version record", record.version_digest),
            ("os state", record.os_state), ("state", status["state"]), ("accel", status.get("accel")),
            ("ssh", status.get("ssh_port") and f"127.0.0.1:{status['ssh_port']}"), ("cpus", record.cpus),
            ("memory", f"{record.memory_mib} MiB"), ("firmware", record.firmware),
            ("disks", ", ".join(d.overlay for d in record.disks)), ("seed", seed and seed.digest),
            ("hostname", seed and seed.hostname), ("admin user", seed and seed.admin_user),
            ("snapshots", ", ".join(snaps)), ("created", record.created),
            ("generalized", "yes (vm start needs --force)" if record.generalized else "no"),
            ("revoked", revoked and f"revoked: {revoked.reason}"),
            ("allowed revoked", record.allowed_revoked),
            ("qemu", " ".join(status["qemu_argv"]) if status.get("qemu_argv") else None)])


def _follow(home: Any, name: str, until: str | None, timeout: float | None) -> None:
    from imgtool.vm import runtime as vmrun
    if until:
        line = vmrun.wait_for(home, name, until, timeout=timeout or 300)
        print(line)
        return
    try:
        for line in vmrun.console_lines(home, name, follow=True, timeout=timeout):
            print(line, flush=True)
    except KeyboardInterrupt:
        sys.stderr.write("\ndetached from the console; the VM keeps running\n")


@vm_app.command("console")
def vm_console(
    ctx: typer.Context,
    name: str,
    follow: Annotated[bool, Opt("--follow", "-f", help="Keep printing while the VM runs.")] = False,
    until: Annotated[str | None, Opt(help="Follow until a line contains this text; print that line.")] = None,
    timeout: Annotated[float | None, Opt(help="Give up after this many seconds (with --follow/--until).")] = None,
) -> None:
    """Print (or follow) the VM's serial console log."""
    from imgtool.vm import runtime as vmrun

    st = state(ctx)
    if follow or until:
        _follow(st.home, name, until, timeout)
        return
    for line in vmrun.console_lines(st.home, name, follow=False):
        print(line)


@vm_app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_ssh(ctx: typer.Context, name: str) -> None:
    """Run ssh into the VM with the right port, user and key (extra arguments go to ssh)."""
    from imgtool.guest import ssh as guest_ssh
    from imgtool.tools import run

    st = state(ctx)
    run.exec_replace(guest_ssh.argv(st.home, name, list(ctx.args), batch=False))


@vm_app.command("snapshot")
def vm_snapshot(ctx: typer.Context, name: str, snap: str) -> None:
    """Snapshot a stopped VM's disks; capture or publish it later as snapshot:NAME/SNAP."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    info = vm.snapshot(st.home, name, snap)
    emit_json(info) if st.json else print(f"snapshot {name}/{snap} taken")


@vm_app.command("delete")
def vm_delete(ctx: typer.Context, name: str) -> None:
    """Delete a VM: stop it, remove its files, release its hold on the version."""
    from imgtool.vm import lifecycle as vm

    st = state(ctx)
    vm.delete(st.home, name)
    emit_json({"deleted": name}) if st.json else print(f"deleted VM {name}")
