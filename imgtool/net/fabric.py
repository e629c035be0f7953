"""The forwarding decisions of a learning Ethernet switch, without sockets (pure module).

For each frame from a port: drop it if it is shorter than an Ethernet header, if its source MAC is a
multicast one (no NIC sends from those), or if the port is bound to a MAC and the frame comes from
another (a guest cannot pose as its neighbour); learn source MAC -> port; send a unicast frame to the
port its destination was last seen on (within `aging` seconds), and flood broadcast, multicast and
unknown destinations to every other port. The table holds at most `max_macs` entries: when it is full
and nothing has aged out, new sources are not learned (their replies are flooded) rather than letting
a guest that invents source MACs grow the switch's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEADER = 14  # destination, source, EtherType
MAX_FRAME = 65535
AGING = 300.0  # seconds a learned MAC stays put without traffic (the usual bridge default)
MAX_MACS = 4096


def _multicast(mac: bytes) -> bool:
    return bool(mac[0] & 1)


@dataclass
class Fabric:
    """Ports by name, each optionally bound to one source MAC; the learned table; nothing else."""

    aging: float = AGING
    max_macs: int = MAX_MACS
    bound: dict[str, bytes | None] = field(default_factory=dict)  # port -> the only source MAC it may use
    table: dict[bytes, tuple[str, float]] = field(default_factory=dict)  # MAC -> (port, last seen)

    def add(self, port: str, mac: bytes | None = None) -> None:
        self.bound[port] = mac
        self.forget(port)

    def remove(self, port: str) -> None:
        self.bound.pop(port, None)
        self.forget(port)

    def forget(self, port: str) -> None:
        """Drop what was learned on `port` (it left, or a new VM took its name)."""
        for mac in [m for m, (p, _) in self.table.items() if p == port]:
            del self.table[mac]

    def route(self, ingress: str, frame: bytes, now: float) -> tuple[str, ...]:
        """The ports `frame`, received on `ingress` at time `now`, goes to (empty: dropped)."""
        if ingress not in self.bound or not HEADER <= len(frame) <= MAX_FRAME:
            return ()
        destination, source = bytes(frame[0:6]), bytes(frame[6:12])
        allowed = self.bound[ingress]
        if _multicast(source) or (allowed is not None and source != allowed):
            return ()
        self._learn(source, ingress, now)
        if not _multicast(destination):
            port, seen = self.table.get(destination, ("", 0.0))
            if port and now - seen <= self.aging:
                return () if port == ingress else (port,)
        return tuple(p for p in self.bound if p != ingress)

    def _learn(self, mac: bytes, port: str, now: float) -> None:
        if mac not in self.table and len(self.table) >= self.max_macs:
            self.expire(now)
            if len(self.table) >= self.max_macs:
                return
        self.table[mac] = (port, now)

    def expire(self, now: float) -> None:
        for mac in [m for m, (_, seen) in self.table.items() if now - seen > self.aging]:
            del self.table[mac]
