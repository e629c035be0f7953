"""imgtool network … (networks between VMs: a private subnet, frames carried by a switch process over unix sockets)"""

from typing import Annotated, Any

import typer

from imgtool.cli.output import emit_json, fields, state, table
from imgtool.flows import shapes
from imgtool.home import Home

network_app = typer.Typer(help="Networks between VMs: a private guest subnet; no root, no host interface, nothing "
                               "leaves the machine. VMs join with vm new --network NAME[:ADDRESS].",
                          no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(network_app, name="network")


def _document(home: Home, name: str) -> dict[str, Any]:
    from imgtool.net import control, networks
    from imgtool.net.layout import NetworkPaths
    from imgtool.vm.record import vms_on_network

    record = networks.load(home, name)
    vms = [{"name": r.name, "address": n.address, "mac": n.mac}
           for r in vms_on_network(home, name) for n in r.networks if n.network == name]
    return shapes.network(record, vms, control.status(NetworkPaths.of(home, name)))


@network_app.command("create")
def network_create(
    ctx: typer.Context,
    name: str,
    subnet: Annotated[str | None, typer.Option(metavar="CIDR", help="Private IPv4 subnet, e.g. 10.91.7.0/24 "
                                                                   "(default: the first free /24 of 10.91.0.0/16).")]
    = None,
) -> None:
    """Make a network. Its switch starts when the first VM on it starts and stops after the last one leaves."""
    from imgtool.clock import stamp
    from imgtool.net import networks

    st = state(ctx)
    record = networks.create(st.home, name, subnet=subnet, clock=stamp)
    if st.json:
        emit_json(_document(st.home, name))
        return
    print(f"created network {name} ({record.subnet}); add VMs with: imgtool vm new VM --image REF --network {name}")


@network_app.command("list")
def network_list(ctx: typer.Context) -> None:
    """List networks with their subnets, VMs and whether their switch runs."""
    from imgtool.net import networks

    st = state(ctx)
    found = [_document(st.home, n.name) for n in networks.list_all(st.home)]
    if st.json:
        emit_json(found)
        return
    table(["name", "subnet", "vms", "switch", "project"],
          [[n["name"], n["subnet"], len(n["vms"]), f"pid {n['switch']['pid']}" if n["switch"] else "stopped",
            n.get("project")] for n in found])


@network_app.command("show")
def network_show(ctx: typer.Context, name: str) -> None:
    """Show a network: subnet, the VMs on it (address, MAC), its switch's ports and drop counters."""
    st = state(ctx)
    found = _document(st.home, name)
    if st.json:
        emit_json(found)
        return
    switch = found["switch"]
    fields([("name", name), ("subnet", found["subnet"]), ("created", found["created"]),
            ("project", found.get("project")),
            ("vms", [f"{v['name']} {v['address']} ({v['mac']})" for v in found["vms"]]),
            ("switch", f"pid {switch['pid']}, {len(switch['ports'])} port(s) attached" if switch else "not running"),
            *([("dropped", [f"{p['vm']}: {p['dropped']}" for p in switch["ports"]])] if switch else [])])


@network_app.command("delete")
def network_delete(ctx: typer.Context, name: str) -> None:
    """Delete a network (refused while a VM has a NIC on it)."""
    from imgtool.net import networks
    from imgtool.vm.record import vms_on_network

    st = state(ctx)
    networks.delete(st.home, name, used_by=[r.name for r in vms_on_network(st.home, name)])
    emit_json({"deleted": name}) if st.json else print(f"deleted network {name}")
