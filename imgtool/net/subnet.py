"""Guest subnets of imgtool networks: parsing, the default allocation, and VM addresses (pure module).

A network's subnet exists only inside the guests: frames travel between QEMU processes over unix
sockets and never reach a host interface, so any private IPv4 range works. The rules, each stated in
its error:
- IPv4 and private (RFC 1918), written as the network itself (10.1.0.0/24, not 10.1.0.5/24), with a
  prefix from /16 (larger is a typo here) to /29 (smaller leaves almost no addresses);
- not overlapping 10.0.2.0/24, the subnet QEMU's user-mode networking gives every VM's first NIC
  (a guest would have two routes to one range), nor another imgtool network, for the same reason
  when a VM joins both;
- the first host address (.1) is reserved for a host-side service later (DNS, a gateway): VMs get
  addresses from the second host address on.
Default subnets are /24s taken in order from 10.91.0.0/16, a range home and office routers rarely use.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError

from imgtool.errors import InvalidArgument, Refused

USER_NET = IPv4Network("10.0.2.0/24")  # QEMU user-mode networking: every VM's first NIC
DEFAULT_POOL = IPv4Network("10.91.0.0/16")
DEFAULT_PREFIX = 24
MIN_PREFIX, MAX_PREFIX = 16, 29
PRIVATE = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
_RULE = "a private IPv4 network such as 10.91.7.0/24 (10/8, 172.16/12 or 192.168/16; prefix /16 to /29)"


def parse_subnet(text: str) -> IPv4Network:
    """The subnet `text` names (CIDR), or InvalidArgument stating the rule."""
    try:
        subnet = IPv4Network(text.strip(), strict=True)
    except (AddressValueError, NetmaskValueError, ValueError) as exc:
        hint = f"use {_RULE}"
        if "has host bits set" in str(exc):
            hint = f"write the network itself: {IPv4Network(text.strip(), strict=False)}"
        raise InvalidArgument(f"subnet '{text}' is not an IPv4 network in CIDR form", hint=hint) from None
    if "/" not in text:
        raise InvalidArgument(f"subnet '{text}' has no prefix length", hint=f"use {_RULE}")
    if not MIN_PREFIX <= subnet.prefixlen <= MAX_PREFIX:
        raise InvalidArgument(f"subnet {subnet} has prefix /{subnet.prefixlen}, outside /{MIN_PREFIX}../{MAX_PREFIX}",
                              hint=f"use {_RULE}")
    if not any(subnet.subnet_of(private) for private in PRIVATE):
        raise InvalidArgument(f"subnet {subnet} is not a private range", hint=f"use {_RULE}")
    return subnet


def check_free(subnet: IPv4Network, others: Iterable[tuple[str, IPv4Network]]) -> IPv4Network:
    """`subnet` unless it overlaps the user-mode NIC's or another network's (Refused, naming it)."""
    if subnet.overlaps(USER_NET):
        raise Refused(f"subnet {subnet} overlaps {USER_NET}, the subnet of every VM's first NIC",
                      hint="pick another range, e.g. 10.91.1.0/24")
    for name, other in others:
        if subnet.overlaps(other):
            raise Refused(f"subnet {subnet} overlaps {other} of network '{name}'",
                          hint="pick a range no other network uses (imgtool network list shows them)")
    return subnet


def default_subnet(taken: Iterable[IPv4Network]) -> IPv4Network:
    """The first /24 of the default pool that overlaps nothing in `taken`."""
    used = list(taken)
    for candidate in DEFAULT_POOL.subnets(new_prefix=DEFAULT_PREFIX):
        if not any(candidate.overlaps(other) for other in used):
            return candidate
    raise Refused(f"every /{DEFAULT_PREFIX} of {DEFAULT_POOL} is taken by a network",
                  hint="give the new network its own range with --subnet")


def first_host(subnet: IPv4Network) -> IPv4Address:
    """The reserved first host address (.1 of a /24)."""
    return subnet.network_address + 1


def parse_address(text: str, subnet: IPv4Network, *, network: str) -> IPv4Address:
    """A VM's address on `network`, given by the user: inside the subnet, a usable host address."""
    try:
        address = IPv4Address(text.strip())
    except AddressValueError:
        raise InvalidArgument(f"'{text}' is not an IPv4 address (network '{network}')",
                              hint=f"give an address inside {subnet}, e.g. {subnet.network_address + 10}") from None
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise InvalidArgument(f"address {address} is not a host address of network '{network}' ({subnet})",
                              hint=f"give an address from {first_host(subnet) + 1} to {subnet.broadcast_address - 1}")
    if address == first_host(subnet):
        raise InvalidArgument(f"address {address} is reserved on network '{network}' (the first host address)",
                              hint=f"give an address from {first_host(subnet) + 1} on")
    return address


def next_address(subnet: IPv4Network, taken: Iterable[IPv4Address], *, network: str) -> IPv4Address:
    """The lowest free VM address of `subnet` (after the reserved first one)."""
    used = set(taken)
    for host in subnet.hosts():
        if host != first_host(subnet) and host not in used:
            return host
    raise Refused(f"network '{network}' ({subnet}) has no free address left",
                  hint="delete a VM from it, or make a network with a larger subnet")


def interface_address(address: IPv4Address, subnet: IPv4Network) -> str:
    """The address as a guest's interface takes it: 10.91.0.2/24."""
    return f"{address}/{subnet.prefixlen}"
