"""imgtool version warm, and the --warm side of vm new and version show."""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, state
from imgtool.errors import InvalidArgument
from imgtool.flows.shapes import human_bytes
from imgtool.home import Home

if TYPE_CHECKING:
    from imgtool.vm.lifecycle import NewVm
    from imgtool.vm.warm_new import Choice, WarmStart

Opt = typer.Option
Arg = typer.Argument


def register(app: typer.Typer) -> None:
    app.command("warm")(version_warm)


def version_warm(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z or @latest (a generalized version)")],
    cpus: Annotated[int | None, Opt(help="vCPUs of the VMs it serves (default: vm new's).")] = None,
    memory: Annotated[int | None, Opt(metavar="MIB", help="Memory in MiB of the VMs it serves "
                                                          "(default: vm new's).")] = None,
    accel: Annotated[str | None, Opt(help="kvm or tcg (default: probe); VMs restored from it need the same.")] = None,
    timeout: Annotated[float, Opt(help="Seconds the template may take to boot until its agent waits.")] = 600.0,
    delete: Annotated[bool, Opt("--delete", help="Delete the version's warm states (only the given size with "
                                                 "--cpus and --memory) instead of making one.")] = False,
) -> None:
    """Boot a template VM from a generalized version until its guest agent waits, then save its device state,
    RAM and disks as a warm state: `vm new --warm` then restores a VM of that size in seconds and gives it
    its own identity before it can be used. Made again, it replaces the state of the same size."""
    from imgtool.gallery import lookup
    from imgtool.vm import warm_make, warm_state

    st = state(ctx)
    warm_make.check_size_args(cpus, memory)
    if accel is not None and accel not in ("kvm", "tcg"):
        raise InvalidArgument(f"unknown accelerator {accel!r}", hint="use kvm or tcg")
    if delete:
        _, digest = lookup.get_version(st.home, ref)
        removed = warm_state.delete(st.home, digest, cpus, memory)
        if st.json:
            emit_json({"deleted": [p.name for p in removed]})
        else:
            print(f"deleted {len(removed)} warm state{'s' if len(removed) != 1 else ''} of {ref}")
        return
    bar = ProgressBar(f"warming {ref}", enabled=not st.json)
    try:
        found = warm_make.make(st.home, warm_make.WarmRequest(ref, cpus, memory, accel, timeout), progress=bar)
    finally:
        bar.close()
    if st.json:
        emit_json({"version": found.record.version, "warm": found.to_json()})
        return
    r = found.record
    print(f"warm state of {r.version} for {r.cpus} vCPUs, {r.memory_mib} MiB: {human_bytes(found.size())} on disk, "
          f"made in {r.seconds:.1f}s ({r.machine}, {r.accel})")
    print(f"create VMs from it with: imgtool vm new NAME --image {r.version} --warm")


def warm_rows(home: Home, digest: str) -> list[tuple[str, Any]]:
    """`version show` lines: one per warm state."""
    from imgtool.vm import warm_state

    rows: list[tuple[str, Any]] = []
    for found in warm_state.list_for(home, digest):
        r = found.record
        rows.append(("warm state", f"{r.cpus} vCPUs, {r.memory_mib} MiB, {r.machine}, {r.qemu_version}, {r.accel}, "
                                   f"{human_bytes(found.size())}, {r.created}"))
    return rows or [("warm state", "none (imgtool version warm)")]


def choose_warm(home: Home, request: "NewVm", *, accel: str | None) -> "Choice":
    """Whether a plain vm new --start restores warm (warm_new.choose)."""
    from imgtool.vm import warm_new

    return warm_new.choose(home, request, requested_accel=accel)


def new_warm(home: Home, request: "NewVm", *, accel: str | None) -> "WarmStart":
    """vm new --warm: restore and personalize (the VM is running afterwards)."""
    from imgtool.vm import warm_new

    return warm_new.create(home, request, requested_accel=accel)

