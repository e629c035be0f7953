"""imgtool audit, imgtool vm wait, imgtool vm generalize"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import State, emit_json, fields, state, table
from imgtool.flows.shapes import human_bytes

if TYPE_CHECKING:
    from imgtool.guest.ssh import Login

Opt = typer.Option
Arg = typer.Argument

AUDIT_HELP = """Inspect a guest's root file system read-only (debugfs through a FUSE export; never mounted)
and report identity that must not be cloned and facts about the guest.

SOURCE: a disk file, vm:NAME (stopped), snapshot:VM/SNAP, blake3:DIGEST or GALLERY/DEF@X.Y.Z.

Exit code 0 when audited clean (or empty: every byte of the disk is zero, so it holds no guest OS),
5 when identity was found, 9 when the file system could not be read ("not audited" is never a pass).

--json prints one document: source, audited, reason, clean, empty, findings (each check, severity, paths,
count, detail), facts (os, kernels, partition_table, root_partition, boot_modes, firmware,
boot_mode_ok, fs_size, fs_free) and audited_at (docs/GUIDE.md). Checks: machine_id, ssh_host_keys,
cloud_init_state (severity identity); authorized_keys, shell_history, dhcp_leases, logs (warning)."""


EMPTY = "audited: empty (every byte of the disk is zero: no guest OS)"


def register(app: typer.Typer, vm_app: typer.Typer) -> None:
    app.command("audit", help=AUDIT_HELP)(audit)
    vm_app.command("wait")(vm_wait)
    vm_app.command("generalize")(vm_generalize)
    app.command("generalize")(generalize_file)


def audit(
    ctx: typer.Context,
    source: Annotated[str, Arg(help="A disk file, vm:NAME, snapshot:VM/SNAP or GALLERY/DEF@X.Y.Z.")],
) -> None:
    from imgtool.guest import service

    st = state(ctx)
    report = service.audit(st.home, source)
    body = {"source": source, **report.to_json()}
    if st.json:
        emit_json(body)
    else:
        print_report(body)
    if not report.audited:
        raise typer.Exit(9)
    if not report.clean:
        raise typer.Exit(5)


def print_report(body: dict[str, Any]) -> None:
    if not body["audited"]:
        print(f"not audited: {body['reason']}")
        return
    if body.get("empty"):
        print(EMPTY)
        return
    facts = body["facts"]
    fit = facts.get("boot_mode_ok")
    fields([("os", facts.get("os")), ("kernels", ", ".join(facts.get("kernels") or [])),
            ("partitions", f"{facts.get('partition_table')}, root on partition {facts.get('root_partition')}"),
            ("boot modes", ", ".join(facts.get("boot_modes") or []) or "none found"),
            ("firmware", facts.get("firmware") and f"{facts['firmware']} ({'ok' if fit else 'MISMATCH'})"),
            ("free space", f"{human_bytes(facts.get('fs_free'))} of {human_bytes(facts.get('fs_size'))}"),
            ("verdict", "clean" if body["clean"] else "identity found: not generalized")])
    if body["findings"]:
        table(["check", "severity", "count", "example"],
              [[f["check"], f["severity"], f["count"], (f["paths"] or [""])[0][:40]] for f in body["findings"]])


def vm_wait(
    ctx: typer.Context,
    name: str,
    ssh: Annotated[bool, Opt("--ssh", help="Wait until SSH accepts the seeded key (always done; "
                                           "cloud-init is asked over SSH).")] = True,
    cloud_init: Annotated[bool, Opt(help="Also wait until `cloud-init status` says done.")] = False,
    timeout: Annotated[float, Opt(help="Give up after this many seconds.")] = 600.0,
    user: Annotated[str | None, Opt(help="Log in as this user (default: the seeded admin; needed for "
                                         "specialized VMs).")] = None,
    identity: Annotated[Path | None, Opt(help="Private key to use (default: the seeded key's).")] = None,
) -> None:
    """Wait until a running VM accepts SSH with its seeded key (and cloud-init is done)."""
    from imgtool.guest.ssh import Login

    del ssh  # always: it is how the guest is asked
    st = state(ctx)
    took = wait_ready(st, name, timeout=timeout, cloud_init=cloud_init, login=Login(user, identity))
    if st.json:
        emit_json({"name": name, "ready": True, "seconds": {k: round(v, 1) for k, v in took.items()}})
    else:
        print(f"VM {name} is ready (ssh after {took['ssh']:.0f}s"
              + (f", cloud-init after {took['cloud_init']:.0f}s)" if "cloud_init" in took else ")"))


def wait_ready(st: State, name: str, *, timeout: float, cloud_init: bool,
               login: "Login | None" = None) -> dict[str, float]:
    """vm wait's work, shared with `vm new --start --wait`: progress on a terminal, never in --json."""
    from imgtool.guest import ssh as guest_ssh

    try:
        return guest_ssh.wait(st.home, name, timeout=timeout, cloud_init=cloud_init,
                              progress=_progress(not st.json), login=login or guest_ssh.Login())
    finally:
        _progress_done(not st.json)


def _progress(enabled: bool) -> Any:
    def show(message: str) -> None:
        if enabled and sys.stderr.isatty():
            sys.stderr.write(f"\r{message} ")
            sys.stderr.flush()
    return show


def _progress_done(enabled: bool) -> None:
    if enabled and sys.stderr.isatty():
        sys.stderr.write("\n")


def vm_generalize(
    ctx: typer.Context,
    name: str,
    remove_admin: Annotated[bool, Opt(help="Also remove the provisioned admin user (account, home, sudo rule), "
                                           "like waagent -deprovision+user.")] = False,
    timeout: Annotated[float, Opt(help="Seconds for the in-guest deprovision and power-off.")] = 180.0,
) -> None:
    """Deprovision a VM so images made from it give every VM its own identity: SSH host keys,
    machine-id, cloud-init state and seed, logs, shell histories, DHCP leases (and --remove-admin).

    Running VM: done inside the guest over SSH, then it powers off. Stopped VM: done offline on its
    disk (debugfs through qemu-storage-daemon's FUSE export). The VM is then marked generalized and
    `vm start` refuses it without --force."""
    from imgtool.guest import generalize

    st = state(ctx)
    result = generalize.generalize(st.home, name, remove_admin=remove_admin, timeout=timeout)
    if st.json:
        emit_json(result.to_json())
        return
    for path in result.removed:
        print(f"removed {path}")
    for path in result.skipped:
        print(f"skipped {path} (a name debugfs cannot be given safely)")
    print(f"generalized VM {name} ({result.mode}); publish it with --os-state generalized")


def generalize_file(
    ctx: typer.Context,
    file: Annotated[str, Arg(help="A disk image file (qcow2, raw, vmdk, vhd, vhdx) with an ext2/3/4 root.")],
) -> None:
    """Generalize a disk file in place, offline, as virt-sysprep does: remove SSH host keys, the
    machine-id (left empty), cloud-init state and seed, logs, shell histories and DHCP leases, so
    that every VM made from it gets its own identity. Nothing is mounted (debugfs through
    qemu-storage-daemon). For a VM use imgtool vm generalize NAME."""
    from imgtool.guest import generalize

    st = state(ctx)
    result = generalize.generalize_file(file)
    if st.json:
        emit_json({**result.to_json(), "file": file})
        return
    for path in result.removed:
        print(f"removed {path}")
    for path in result.skipped:
        print(f"skipped {path} (a name debugfs cannot be given safely)")
    print(f"generalized {file}" + ("" if result.removed else " (nothing to remove)")
          + "; publish it into a generalized definition")
