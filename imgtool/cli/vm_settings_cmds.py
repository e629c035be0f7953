"""imgtool vm ssh-config, vm resize, and the forward and disk parts of vm update."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import emit_json, state
from imgtool.errors import InvalidArgument
from imgtool.flows.shapes import human_bytes
from imgtool.home import Home
from imgtool.vm.record import VmRecord

if TYPE_CHECKING:
    from imgtool.vm.ssh_config import SshHost

Opt = typer.Option
Arg = typer.Argument


def update(home: Home, name: str, *, cpus: int | None, memory: int | None, shares: tuple[Any, ...] | None,
           forward: list[str] | None, no_forwards: bool, disk_size: str | None,
           ignore_recommendations: bool) -> VmRecord:
    """vm update: every value is checked before anything changes, then each part is applied."""
    from imgtool.vm import lifecycle, options, settings
    from imgtool.vm.record import load

    if forward and no_forwards:
        raise InvalidArgument("--forward and --no-forwards contradict each other",
                              hint="give the forwards to keep with --forward, or --no-forwards alone")
    if cpus is None and memory is None and shares is None and forward is None and not no_forwards \
            and disk_size is None:
        raise InvalidArgument("nothing to update", hint=f"give --cpus, --memory, --share, --forward or --disk-size, "
                                                        f"e.g. imgtool vm update {name} --memory 1024")
    forwards = options.check_forwards(tuple(options.parse_forward(f) for f in forward or []))
    size = None if disk_size is None else options.parse_size(disk_size)
    record = load(home, name)
    if cpus is not None or memory is not None or shares is not None:
        record = lifecycle.update(home, name, cpus=cpus, memory_mib=memory, shares=shares,
                                  ignore_recommendations=ignore_recommendations)
    if forward is not None or no_forwards:
        record = settings.set_forwards(home, name, forwards)
    if size is not None:
        record = settings.grow_disk(home, name, size)
    return record


def changed_lines(record: VmRecord, forward: list[str] | None, no_forwards: bool, disk_size: str | None) -> list[str]:
    lines = []
    if forward is not None or no_forwards:
        lines.append("forwards: " + (", ".join(str(f) for f in record.forwards) or "none besides SSH"))
    os_disk = record.disk(None)
    if disk_size is not None and os_disk is not None:
        lines.append(f"OS disk {human_bytes(os_disk.virtual_size)}")
    return lines


def vm_ssh_config(ctx: typer.Context,
                  name: Annotated[str | None, Arg(help="VM name (default: every running VM).")] = None) -> None:
    """Print an OpenSSH config block for a running VM (Host NAME, its port, user, key and its own known_hosts,
    host key checked strictly), for `ssh NAME`, scp and editors: imgtool vm ssh-config web1 >> ~/.ssh/config.
    Without a name, one block per running VM. The port is this start's: print it again after the next start."""
    from imgtool.vm import ssh_config

    st = state(ctx)
    hosts = [ssh_config.for_vm(st.home, name)] if name else ssh_config.running(st.home)
    if st.json:
        shown = [_host_json(host, ssh_config.render(host)) for host in hosts]
        emit_json(shown[0] if name else shown)
    else:
        sys.stdout.write("\n".join(ssh_config.render(host) for host in hosts))
    for host in hosts:
        if not host.key_recorded():
            sys.stderr.write(f"imgtool: note: VM {host.name}'s host key is not recorded yet, and this block checks "
                             f"it strictly; record it first with: imgtool vm wait {host.name} (or imgtool vm ssh "
                             f"{host.name})\n")


def _host_json(host: SshHost, config: str) -> dict[str, Any]:
    from imgtool.vm import ssh_config

    return {"name": host.name, "host": ssh_config.ADDRESS, "port": host.port, "user": host.user,
            "identity_file": host.identity and str(host.identity), "user_known_hosts_file": str(host.known_hosts),
            "host_key_alias": host.alias, "config": config}


def vm_resize(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="VM name.")],
    disk_size: Annotated[str, Opt(metavar="SIZE", help="The OS disk's new size, e.g. 20G (never smaller than now).")],
) -> None:
    """Grow a stopped VM's OS disk (its qcow2 overlay; the shared base stays as it is). Shrinking is refused.
    The guest grows its file system at the next boot (cloud-init's growpart); same as vm update --disk-size."""
    from imgtool.flows import shapes
    from imgtool.vm import options, settings

    st = state(ctx)
    record = settings.grow_disk(st.home, name, options.parse_size(disk_size))
    if st.json:
        emit_json(shapes.vm_of(st.home, name))
        return
    os_disk = record.disk(None)
    print(f"grew VM {name}'s OS disk to {human_bytes(os_disk.virtual_size if os_disk else 0)}; "
          f"it takes effect at the next start: imgtool vm start {name}")


def register(vm_app: typer.Typer) -> None:
    vm_app.command("ssh-config")(vm_ssh_config)
    vm_app.command("resize")(vm_resize)
