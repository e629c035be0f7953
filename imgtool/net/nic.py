"""A VM's NIC on an imgtool network, as data (pure module): its MAC, its port name, its QEMU argv.

Each network NIC is a virtio-net device on a `-netdev dgram` backend: QEMU binds the VM's end of a
unix datagram socket pair and sends every frame, one datagram each, to the switch's end (QEMU 7.2
has no VDE; `stream` would lose the link for good if the switch restarted, since 7.2 cannot reconnect
it, while a datagram socket just starts being answered again). Both sockets live in the network's
socket folder (imgtool.net.layout), named after the port, so the argv can be built before the switch
knows the VM.

MACs are QEMU's locally administered prefix 52:54:00 and three bytes of a hash of the network and VM
names: stable across restarts (the guest's config matches on it), and different between VMs of one
network unless the hash collides, which `mac_for` resolves against the MACs already taken.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import InvalidArgument, Refused
from imgtool.tools.qemu import escape
from imgtool.vocab import MAX_SOCKET_PATH

MAC_PREFIX = "52:54:00"
MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
PORT_ID_HEX = 16  # a port's file names: 16 hex digits of a hash of the VM name, short for sun_path
VM_SUFFIX, SWITCH_SUFFIX = ".vm", ".sw"


def port_id(vm: str) -> str:
    """The file-name stem of a VM's port sockets: short, fixed length, the same for every start."""
    return hashlib.blake2b(vm.encode(), digest_size=PORT_ID_HEX // 2, person=b"imgtool-port").hexdigest()


def mac_for(network: str, vm: str, taken: Iterable[str] = ()) -> str:
    """The VM's MAC on `network`: a hash of both names, moved on while it collides with `taken`."""
    used = {mac.lower() for mac in taken}
    for attempt in range(1 << 16):
        digest = hashlib.blake2b(f"{network}\0{vm}\0{attempt}".encode(), digest_size=3).hexdigest()
        mac = f"{MAC_PREFIX}:{digest[0:2]}:{digest[2:4]}:{digest[4:6]}"
        if mac not in used:
            return mac
    raise Refused(f"no free MAC address for VM '{vm}' on network '{network}'",
                  hint="a network holds a few thousand VMs at most: use another network")


def check_mac(mac: str) -> str:
    """`mac` in lower case, if it is six colon-separated hex bytes of a unicast address."""
    value = mac.lower()
    if not MAC.fullmatch(value) or int(value[:2], 16) & 1:
        raise InvalidArgument(f"'{mac}' is not a unicast MAC address", hint="e.g. 52:54:00:12:34:56")
    return value


@dataclass(frozen=True)
class PortSockets:
    """The two ends of a VM's port: QEMU binds `vm` and sends to `switch`; the switch the reverse."""

    vm: Path
    switch: Path

    @classmethod
    def in_folder(cls, folder: Path, vm: str) -> PortSockets:
        stem = port_id(vm)
        return cls(folder / f"{stem}{VM_SUFFIX}", folder / f"{stem}{SWITCH_SUFFIX}")


@dataclass(frozen=True)
class Nic:
    """One extra NIC of a VM: which netdev index, which MAC, which port sockets."""

    index: int  # 1, 2, ...: the first NIC (user-mode, SSH forward) is QEMU's n0
    mac: str
    sockets: PortSockets


def nic_argv(nic: Nic) -> list[str]:
    """The `-netdev`/`-device` pair for `nic`, appended to a VM's argv after imgtool.tools.qemu's.

    InvalidArgument if the index, MAC or a socket path cannot work (a path past sun_path's limit
    would make QEMU fail with a cryptic error at start).
    """
    if nic.index < 1:
        raise InvalidArgument(f"network NIC index {nic.index} must be 1 or more", hint="NIC 0 is the user-mode one")
    mac = check_mac(nic.mac)
    for path in (nic.sockets.vm, nic.sockets.switch):
        if len(str(path).encode()) > MAX_SOCKET_PATH or "\n" in str(path) or "\0" in str(path):
            raise InvalidArgument(f"network socket path {str(path)!r} is not usable (longer than {MAX_SOCKET_PATH} "
                                  "bytes, or holds a newline)", hint="use a shorter --home or TMPDIR")
    netdev = f"net{nic.index}"
    return [
        "-netdev", (f"dgram,id={netdev},local.type=unix,local.path={escape(nic.sockets.vm)},"
                    f"remote.type=unix,remote.path={escape(nic.sockets.switch)}"),
        "-device", f"virtio-net-pci,netdev={netdev},mac={mac}",
    ]  # fmt: skip
