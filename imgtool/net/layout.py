"""Where a network keeps its files: one object owns every path.

    <home>/networks/NAME/network.json   the record (imgtool.net.networks)
    <home>/networks/NAME/switch.pid     the running switch's pid (it holds switch.lock while it runs)
    <home>/networks/NAME/switch.lock    flock: one switch per network
    <home>/networks/NAME/switch.log     what the switch said (attach, detach, drops, exit)
    <home>/networks/NAME/ports.json     the attached ports (VM name, QEMU pid, MAC), so a restarted
                                        switch takes the running VMs back
    SOCKETS/control.sock                the switch's control socket (one JSON request per connection)
    SOCKETS/<port>.vm, <port>.sw        each VM's port: QEMU's end and the switch's end

SOCKETS is <home>/networks/NAME/sock when its longest socket path fits sun_path, else a folder of
its own under the private /tmp/imgtool-<uid>/ (imgtool.tools.sockets), named by a hash of the network
folder so two homes never share one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from imgtool.home import Home
from imgtool.names import check_name
from imgtool.net.nic import PORT_ID_HEX, PortSockets
from imgtool.tools import sockets
from imgtool.vocab import MAX_SOCKET_PATH

RECORD = "network.json"
_LONGEST_SOCKET = PORT_ID_HEX + 3  # "<port>.vm" is longer than "control.sock"


def networks_dir(home: Home) -> Path:
    return home.root / "networks"


def _socket_dir(folder: Path) -> Path:
    """Pure: the socket folder a network folder uses (the private one is not created here)."""
    own = folder / "sock"
    if len(os.fsencode(own)) + 1 + _LONGEST_SOCKET <= MAX_SOCKET_PATH:
        return own
    tag = hashlib.blake2b(os.fsencode(folder.absolute()), digest_size=10).hexdigest()
    return sockets.private_dir() / f"net-{tag}"


@dataclass(frozen=True)
class NetworkPaths:
    """Every path of one network; `folder` is <home>/networks/NAME."""

    folder: Path

    @classmethod
    def of(cls, home: Home, name: str) -> NetworkPaths:
        return cls(networks_dir(home) / check_name(name, "network"))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def record(self) -> Path:
        return self.folder / RECORD

    @property
    def pid_file(self) -> Path:
        return self.folder / "switch.pid"

    @property
    def lock(self) -> Path:
        return self.folder / "switch.lock"

    @property
    def log(self) -> Path:
        return self.folder / "switch.log"

    @property
    def ports(self) -> Path:
        return self.folder / "ports.json"

    @property
    def sockets(self) -> Path:
        return _socket_dir(self.folder)

    @property
    def control(self) -> Path:
        return self.sockets / "control.sock"

    def port(self, vm: str) -> PortSockets:
        """The two socket paths of VM `vm`'s port on this network."""
        return PortSockets.in_folder(self.sockets, vm)
