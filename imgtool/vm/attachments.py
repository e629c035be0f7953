"""A VM's shared folders and network NICs: checked at vm new / vm update, wired in at vm start.

Contracts:
- `check_shares` and `check_networks` raise before anything is made (a missing folder, the home, an
  unknown network, an address outside its subnet).
- `assign` gives each NIC its MAC and address; the caller holds the networks lock (`networks_lock`)
  from `assign` until the VM record is saved, so two VMs never get one address.
- The seed of a VM with NICs is rebuilt at each start from `provisioning.json` (0600, the inputs of
  the first seed, same instance id), so its /etc/hosts lines name every peer on its networks, also
  the ones made after it; cloud-init's `bootcmd` rewrites them at every boot.
- `start_shares` serves every share (one virtiofsd each, exiting with QEMU); a start that fails later
  must `stop` the handles. `attach` gives a running QEMU its switch ports.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, replace
from ipaddress import IPv4Address
from pathlib import Path

from imgtool.errors import Corrupt, InvalidArgument
from imgtool.home import Home
from imgtool.net import control, networks, nic, subnet
from imgtool.net.layout import NetworkPaths, networks_dir
from imgtool.tools import run
from imgtool.vm import seed, share_check, shares, virtiofs
from imgtool.vm.record import NetworkAttachment, ShareRecord, VmRecord, load_records, save, vm_dir
from imgtool.vm.shares import Share
from store import atomic
from store.lock import file_lock

PROVISIONING = "provisioning.json"
VIRTIOFSD_LOG = "virtiofsd.log"
Wanted = tuple[str, str | None]  # network name, address as typed (None: the next free one)


def parse_network(text: str) -> Wanted:
    """NAME[:ADDRESS] as `vm new --network` takes it."""
    name, sep, address = text.partition(":")
    if not name or (sep and not address):
        raise InvalidArgument(f"network '{text}' is not NAME or NAME:ADDRESS", hint="e.g. --network lan:10.91.0.10")
    return name, address or None


def check_shares(home: Home, given: tuple[Share, ...]) -> tuple[ShareRecord, ...]:
    """Each share's host folder resolved and allowed (imgtool.vm.share_check), guest paths apart."""
    checked = shares.check_shares(tuple(share_check.check_host(s, home=home.root) for s in given))
    return tuple(ShareRecord(str(s.host), s.guest, s.readonly) for s in checked)


def check_networks(home: Home, wanted: tuple[Wanted, ...]) -> None:
    """Every network exists, none twice, every given address is a host address of its subnet."""
    seen: set[str] = set()
    for name, address in wanted:
        if name in seen:
            raise InvalidArgument(f"network '{name}' is given twice", hint="a VM has one NIC per network")
        seen.add(name)
        record = networks.load(home, name)
        if address is not None:
            subnet.parse_address(address, record.subnet, network=name)


@contextlib.contextmanager
def networks_lock(home: Home) -> Iterator[None]:
    """The lock under which addresses are chosen and the VM record naming them is saved."""
    atomic.makedirs(networks_dir(home))
    with file_lock(networks_dir(home) / ".lock"):
        yield


def assign(home: Home, vm: str, wanted: tuple[Wanted, ...]) -> tuple[NetworkAttachment, ...]:
    """MAC and address of each NIC (the caller holds `networks_lock`)."""
    others = [r for r in load_records(home) if r.name != vm]
    found = []
    for name, text in wanted:
        record = networks.load(home, name)
        taken = [n for r in others for n in r.networks if n.network == name]
        used = {IPv4Address(n.address) for n in taken}
        address = subnet.parse_address(text, record.subnet, network=name) if text is not None else \
            subnet.next_address(record.subnet, used, network=name)
        if text is not None and address in used:
            owner = next(r.name for r in others for n in r.networks if n.network == name and n.address == str(address))
            raise InvalidArgument(f"address {address} on network '{name}' is VM '{owner}''s",
                                  hint="give another address, or leave it out to get the next free one")
        mac = nic.mac_for(name, vm, (n.mac for n in taken))
        found.append(NetworkAttachment(name, mac, str(address), record.subnet.prefixlen))
    return tuple(found)


# --- the seed -------------------------------------------------------------------------------------


def mounts(record_shares: tuple[ShareRecord, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(shares.cloud_init_mount(i, _share(s))) for i, s in enumerate(record_shares))


def _share(s: ShareRecord) -> Share:
    return Share(Path(s.host), s.guest, s.readonly)


def peers(home: Home, record: VmRecord) -> tuple[tuple[str, str], ...]:
    """(address, name) of every other VM on this VM's networks: its VM name, and its hostname if other."""
    mine = {n.network for n in record.networks}
    found: list[tuple[str, str]] = []
    for other in load_records(home):
        if other.name == record.name:
            continue
        for attachment in other.networks:
            if attachment.network in mine:
                names = dict.fromkeys([other.name, *([other.seed.hostname] if other.seed else [])])
                found += [(attachment.address, n) for n in names if seed.is_hostname(n)]
    return tuple(found)


def guest_nics(record: VmRecord) -> tuple[seed.GuestNic, ...]:
    return tuple(seed.GuestNic(n.mac, f"{n.address}/{n.prefix}") for n in record.networks)


def save_provisioning(folder: Path, p: seed.Provisioning) -> None:
    """The first seed's inputs, kept to rebuild the seed (0600: user-data may hold secrets)."""
    body = {"instance_id": p.instance_id, "hostname": p.hostname, "admin_user": p.admin_user,
            "ssh_keys": list(p.ssh_keys), "user_data": p.user_data}
    atomic.replace(folder / PROVISIONING, json.dumps(body).encode(), mode=0o600)


def _load_provisioning(folder: Path) -> seed.Provisioning | None:
    try:
        body = json.loads((folder / PROVISIONING).read_text())
        return seed.Provisioning(body["instance_id"], body["hostname"], body["admin_user"], tuple(body["ssh_keys"]),
                                 body["user_data"])
    except FileNotFoundError:
        return None  # a VM made before networks and shares existed: its seed stays as made
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Corrupt(f"{folder / PROVISIONING} is unreadable: {exc}", hint="delete the VM and make it again") from None


def provisioning(home: Home, record: VmRecord, first: seed.Provisioning) -> seed.Provisioning:
    """`first` with the VM's mounts, NICs and peers."""
    return replace(first, mounts=mounts(record.shares), nics=guest_nics(record), hosts=peers(home, record))


def refresh_seed(home: Home, record: VmRecord) -> VmRecord:
    """Rebuild the seed of a VM with shares or NICs (same instance id: nothing runs twice in the guest)."""
    folder = vm_dir(home, record.name)
    first = _load_provisioning(folder) if record.seed is not None else None
    if record.seed is None or first is None or not (record.networks or record.shares):
        return record
    digest = seed.write_seed(folder / record.seed.file, provisioning(home, record, first))
    if digest == record.seed.digest:
        return record
    updated = replace(record, seed=replace(record.seed, digest=digest))
    save(home, updated)
    return updated


# --- a start --------------------------------------------------------------------------------------


def device_argv(home: Home, record: VmRecord) -> list[str]:
    """What QEMU needs beyond imgtool.tools.qemu's argv: shared RAM and a device per share, a NIC per network."""
    folder = vm_dir(home, record.name)
    argv: list[str] = []
    if record.shares:
        argv += shares.memory_argv(record.memory_mib)
        for index in range(len(record.shares)):
            argv += shares.device_argv(index, virtiofs.socket_path(folder, index))
    for index, attachment in enumerate(record.networks, start=1):
        sockets = control.prepare(NetworkPaths.of(home, attachment.network), record.name)
        argv += nic.nic_argv(nic.Nic(index, attachment.mac, sockets))
    return argv


def start_shares(home: Home, record: VmRecord) -> list[run.Background]:
    """One virtiofsd per share, listening before QEMU starts (checked again: the folder may have gone)."""
    folder = vm_dir(home, record.name)
    handles: list[run.Background] = []
    try:
        for index, share in enumerate(record.shares):
            checked = share_check.check_host(_share(share), home=home.root)
            handles.append(virtiofs.start(checked, socket=virtiofs.socket_path(folder, index),
                                          log=folder / VIRTIOFSD_LOG))
    except BaseException:
        stop_all(handles)
        raise
    return handles


def stop_all(handles: list[run.Background]) -> None:
    for handle in handles:
        handle.stop()


def attach(home: Home, record: VmRecord, pid: int) -> None:
    """Give running QEMU `pid` its port on each network (a network's switch starts on demand)."""
    for attachment in record.networks:
        control.attach(NetworkPaths.of(home, attachment.network), record.name, pid=pid, mac=attachment.mac)


def detach(home: Home, record: VmRecord) -> None:
    """Take the VM off its networks now (its ports also go by themselves when QEMU exits)."""
    for attachment in record.networks:
        with contextlib.suppress(Exception):  # a missing network or switch: nothing to leave
            control.detach(NetworkPaths.of(home, attachment.network), record.name)


def describe(record: VmRecord) -> list[dict[str, object]]:
    """The shares with their tag and the guest's mount command (vm show)."""
    return [{**asdict(s), "tag": shares.tag(i), "mount_command": shares.mount_command(i, _share(s))}
            for i, s in enumerate(record.shares)]
