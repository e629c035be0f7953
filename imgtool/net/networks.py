"""Network records: `network create | list | show | delete` as a small domain module.

A network is a name and a guest subnet, kept in <home>/networks/NAME/network.json (written once; the
folder layout is in imgtool.net.layout). Which VMs use a network is recorded on the VMs, not here, so
`delete` is handed the names of the VMs that use it by its caller, and refuses while there are any
(or while its switch has ports, which covers a VM whose record is not readable).

Contracts:
- `create` claims the record with a create-only write under the networks lock, so two concurrent
  creates of one name give one network and an AlreadyExists, and two default subnets never collide.
  An interrupted create leaves at most an empty folder, which `list` skips and `create` reuses.
- `delete` refuses while VMs use the network or its switch still has ports; it stops an idle switch
  and removes the folder and the socket folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from imgtool.errors import AlreadyExists, Corrupt, NotFound, Refused
from imgtool.home import Home
from imgtool.names import check_name
from imgtool.net import control
from imgtool.net import subnet as subnets
from imgtool.net.layout import RECORD, NetworkPaths, networks_dir
from imgtool.records import Fields, JsonObject, build, check_record
from store import atomic
from store.lock import file_lock

FORMAT = 1
_FIELDS = {"name", "subnet", "created", "project"}


@dataclass(frozen=True)
class NetworkRecord:
    name: str
    subnet: IPv4Network
    created: str
    project: str | None = None  # the environment (imgtool up) that made it; None: made by network create

    def to_json(self) -> JsonObject:
        body: JsonObject = {"format": FORMAT, "kind": "network", "name": self.name, "subnet": str(self.subnet),
                            "created": self.created}
        if self.project is not None:
            body["project"] = self.project
        return body

    @classmethod
    def from_json(cls, obj: object, what: str) -> NetworkRecord:
        f = Fields(check_record(obj, kind="network", fmt=FORMAT, fields=_FIELDS, what=what), what)
        return build(what, lambda: cls(check_name(f.text("name"), "network"), subnets.parse_subnet(f.text("subnet")),
                                       f.text("created"), f.opt_text("project")))


def load(home: Home, name: str) -> NetworkRecord:
    paths = NetworkPaths.of(home, name)
    try:
        obj = json.loads(paths.record.read_text())
    except FileNotFoundError:
        raise NotFound(f"network '{name}' does not exist", hint="list networks with imgtool network list") from None
    except (OSError, ValueError) as exc:
        raise Corrupt(f"network '{name}' has an unreadable record: {exc}",
                      hint=f"delete it with imgtool network delete {name}") from None
    record = NetworkRecord.from_json(obj, f"network '{name}' record")
    if record.name != name:
        raise Corrupt(f"network '{name}' record names '{record.name}'", hint=f"imgtool network delete {name}")
    return record


def list_all(home: Home) -> list[NetworkRecord]:
    """Every network with a readable record, by name (a half-made folder has none and is skipped)."""
    folder = networks_dir(home)
    if not folder.is_dir():
        return []
    found: list[NetworkRecord] = []
    for path in sorted(folder.glob(f"*/{RECORD}")):
        try:
            found.append(load(home, path.parent.name))
        except (NotFound, Corrupt):
            continue
    return found


def create(home: Home, name: str, *, subnet: str | None = None, clock: Callable[[], str],
           project: str | None = None) -> NetworkRecord:
    """Make network `name` with `subnet` (CIDR) or the first free default /24.

    InvalidArgument for a bad name or subnet, Refused for an overlapping one, AlreadyExists if the
    name is taken.
    """
    paths = NetworkPaths.of(home, name)
    wanted = subnets.parse_subnet(subnet) if subnet is not None else None
    home.ensure()
    atomic.makedirs(networks_dir(home))
    with file_lock(networks_dir(home) / ".lock"):
        others = [(n.name, n.subnet) for n in list_all(home) if n.name != name]
        if paths.record.exists():
            raise AlreadyExists(f"network '{name}' already exists", hint=f"imgtool network show {name}")
        chosen = subnets.check_free(wanted, others) if wanted is not None else \
            subnets.default_subnet(s for _, s in others)
        record = NetworkRecord(name, chosen, clock(), project)
        atomic.makedirs(paths.folder)
        if not atomic.create(paths.record, json.dumps(record.to_json(), indent=2, sort_keys=True).encode()):
            raise AlreadyExists(f"network '{name}' already exists", hint=f"imgtool network show {name}")
    return record



def delete(home: Home, name: str, *, used_by: Iterable[str]) -> NetworkRecord:
    """Remove network `name` unless VMs use it (`used_by`: the VMs whose records name it) or its switch
    still has ports; an idle switch is stopped first."""
    record = load(home, name)
    paths = NetworkPaths.of(home, name)
    users = sorted(set(used_by)) or control.ports(paths)
    if users:
        raise Refused(f"network '{name}' is used by VM(s) {', '.join(users)}",
                      hint=f"delete those VMs first (imgtool vm delete {users[0]})")
    control.stop(paths)
    _remove(paths)
    return record


def _remove(paths: NetworkPaths) -> None:
    sockets = paths.sockets
    if sockets.parent != paths.folder and sockets.is_dir():
        atomic.remove_tree(sockets)
    atomic.remove_tree(paths.folder)
