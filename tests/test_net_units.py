"""Networks without QEMU: subnet rules, MACs and the NIC argv, the forwarding decisions, network records."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from imgtool.errors import AlreadyExists, Corrupt, InvalidArgument, NotFound, Refused
from imgtool.home import Home
from imgtool.net import networks, nic, subnet
from imgtool.net.fabric import Fabric
from imgtool.net.layout import NetworkPaths

CLOCK = lambda: "2026-01-02T03:04:05Z"  # noqa: E731


# --- subnets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "fragment"), [
    ("10.1.0.5/24", "write the network itself: 10.1.0.0/24"),
    ("10.1.0.0", "no prefix length"),
    ("10.0.0.0/8", "outside /16../29"),
    ("10.1.0.0/30", "outside /16../29"),
    ("8.8.8.0/24", "not a private range"),
    ("fd00::/64", "not an IPv4 network"),
    ("lan", "not an IPv4 network"),
    ("10.1.0.0/33", "not an IPv4 network"),
])  # fmt: skip
def test_bad_subnets_say_the_rule(text: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        subnet.parse_subnet(text)
    assert fragment in str(caught.value)


def test_good_subnets_parse() -> None:
    assert subnet.parse_subnet("192.168.50.0/24") == IPv4Network("192.168.50.0/24")
    assert subnet.parse_subnet(" 172.20.0.0/16 ") == IPv4Network("172.20.0.0/16")


def test_overlaps_with_the_user_net_and_other_networks_are_refused() -> None:
    with pytest.raises(Refused, match="every VM's first NIC"):
        subnet.check_free(IPv4Network("10.0.0.0/16"), [])
    with pytest.raises(Refused, match="network 'lan'"):
        subnet.check_free(IPv4Network("10.5.1.0/24"), [("lan", IPv4Network("10.5.0.0/16"))])
    assert subnet.check_free(IPv4Network("10.6.0.0/24"), [("lan", IPv4Network("10.5.0.0/16"))])


def test_default_subnets_skip_taken_ones() -> None:
    assert subnet.default_subnet([]) == IPv4Network("10.91.0.0/24")
    taken = [IPv4Network("10.91.0.0/24"), IPv4Network("10.91.1.0/25")]
    assert subnet.default_subnet(taken) == IPv4Network("10.91.2.0/24")
    with pytest.raises(Refused, match="every /24"):
        subnet.default_subnet([IPv4Network("10.91.0.0/16")])


def test_addresses_are_host_addresses_past_the_reserved_first() -> None:
    net = IPv4Network("10.9.0.0/24")
    assert subnet.parse_address("10.9.0.7", net, network="lan") == IPv4Address("10.9.0.7")
    for bad, fragment in (("10.9.0.0", "not a host"), ("10.9.0.255", "not a host"), ("10.9.1.5", "not a host"),
                          ("10.9.0.1", "reserved"), ("nine", "not an IPv4 address")):
        with pytest.raises(InvalidArgument, match=fragment):
            subnet.parse_address(bad, net, network="lan")
    assert subnet.next_address(net, [], network="lan") == IPv4Address("10.9.0.2")
    assert subnet.next_address(net, [IPv4Address("10.9.0.2")], network="lan") == IPv4Address("10.9.0.3")
    tiny = IPv4Network("10.9.0.0/29")  # hosts .1-.6, .1 reserved
    with pytest.raises(Refused, match="no free address"):
        subnet.next_address(tiny, [tiny.network_address + i for i in range(2, 7)], network="lan")
    assert subnet.interface_address(IPv4Address("10.9.0.7"), net) == "10.9.0.7/24"


# --- NIC -------------------------------------------------------------------------------------


def test_macs_are_stable_unicast_and_avoid_taken_ones() -> None:
    mac = nic.mac_for("lan", "web")
    assert mac == nic.mac_for("lan", "web") and mac.startswith("52:54:00:") and nic.check_mac(mac) == mac
    assert mac != nic.mac_for("lan", "db") and mac != nic.mac_for("lab", "web")
    other = nic.mac_for("lan", "web", taken=[mac.upper()])
    assert other != mac and other.startswith("52:54:00:")
    for bad in ("01:00:5e:00:00:01", "52:54:00:12:34", "zz:54:00:12:34:56"):
        with pytest.raises(InvalidArgument):
            nic.check_mac(bad)


def test_port_sockets_are_short_and_per_vm(tmp_path: Path) -> None:
    a, b = nic.PortSockets.in_folder(tmp_path, "a"), nic.PortSockets.in_folder(tmp_path, "b")
    assert a.vm.parent == tmp_path and a.vm.name.endswith(".vm") and a.switch.name.endswith(".sw")
    assert a.vm.stem == a.switch.stem and len(a.vm.stem) == nic.PORT_ID_HEX and a.vm.stem != b.vm.stem
    long = nic.PortSockets.in_folder(tmp_path, "v" * 80)
    assert len(long.vm.name) == len(a.vm.name)


def test_nic_argv_is_a_dgram_netdev_and_a_virtio_nic() -> None:
    ports = nic.PortSockets(Path("/s/p,1.vm"), Path("/s/p,1.sw"))
    assert nic.nic_argv(nic.Nic(2, "52:54:00:AA:bb:01", ports)) == [
        "-netdev", "dgram,id=net2,local.type=unix,local.path=/s/p,,1.vm,remote.type=unix,remote.path=/s/p,,1.sw",
        "-device", "virtio-net-pci,netdev=net2,mac=52:54:00:aa:bb:01",
    ]  # fmt: skip


def test_nic_argv_refuses_what_qemu_could_not_use() -> None:
    ok = nic.PortSockets(Path("/s/a.vm"), Path("/s/a.sw"))
    with pytest.raises(InvalidArgument, match="NIC 0"):
        nic.nic_argv(nic.Nic(0, "52:54:00:00:00:01", ok))
    with pytest.raises(InvalidArgument, match="unicast"):
        nic.nic_argv(nic.Nic(1, "ff:ff:ff:ff:ff:ff", ok))
    deep = nic.PortSockets(Path("/" + "d" * 110 + "/a.vm"), Path("/s/a.sw"))
    with pytest.raises(InvalidArgument, match="107 bytes"):
        nic.nic_argv(nic.Nic(1, "52:54:00:00:00:01", deep))


# --- forwarding ------------------------------------------------------------------------------

A, B, C = bytes.fromhex("525400000001"), bytes.fromhex("525400000002"), bytes.fromhex("525400000003")
BROADCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + b"payload"


def fabric() -> Fabric:
    f = Fabric(aging=300.0)
    for port in ("a", "b", "c"):
        f.add(port)
    return f


def test_unknown_and_broadcast_flood_known_go_to_one_port() -> None:
    f = fabric()
    assert f.route("a", frame(B, A), 0.0) == ("b", "c")  # b not learned yet: flood
    assert f.route("b", frame(BROADCAST, B), 1.0) == ("a", "c")
    assert f.route("a", frame(B, A), 2.0) == ("b",)  # b was learned from its broadcast
    assert f.route("b", frame(A, B), 3.0) == ("a",)
    assert f.route("c", frame(bytes.fromhex("01005e000001"), C), 4.0) == ("a", "b")  # multicast floods


def test_frames_are_dropped_when_they_cannot_be_right() -> None:
    f = fabric()
    assert f.route("a", b"\x00" * 13, 0.0) == ()  # shorter than a header
    assert f.route("a", frame(B, BROADCAST), 0.0) == ()  # a multicast source
    assert f.route("nobody", frame(B, A), 0.0) == ()  # not a port
    f.route("b", frame(BROADCAST, B), 0.0)
    assert f.route("b", frame(B, A), 1.0) == ()  # a and b behind one port: stays there


def test_a_port_bound_to_a_mac_cannot_send_from_another() -> None:
    f = Fabric()
    f.add("a", A)
    f.add("b")
    assert f.route("a", frame(BROADCAST, C), 0.0) == ()  # a poses as C: dropped, C not learned
    assert C not in f.table
    assert f.route("a", frame(BROADCAST, A), 0.0) == ("b",)


def test_learned_macs_age_out_and_leave_with_their_port() -> None:
    f = fabric()
    f.route("b", frame(BROADCAST, B), 0.0)
    assert f.route("a", frame(B, A), 299.0) == ("b",)
    assert f.route("a", frame(B, A), 301.0) == ("b", "c")  # aged: flooded again
    f.route("b", frame(BROADCAST, B), 302.0)
    f.remove("b")
    assert B not in f.table and f.route("a", frame(B, A), 303.0) == ("c",)


def test_the_table_is_bounded() -> None:
    f = Fabric(max_macs=2)
    f.add("a")
    f.add("b")
    for i in range(5):
        f.route("a", frame(BROADCAST, bytes([0x52, 0, 0, 0, 1, i])), 0.0)
    assert len(f.table) == 2
    f.route("a", frame(BROADCAST, A), 1000.0)  # the old ones aged out: room again
    assert A in f.table


# --- records ---------------------------------------------------------------------------------


def test_create_list_show_delete(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    assert networks.list_all(home) == []
    lan = networks.create(home, "lan", clock=CLOCK)
    lab = networks.create(home, "lab", subnet="192.168.60.0/24", clock=CLOCK)
    assert lan.subnet == IPv4Network("10.91.0.0/24") and lab.subnet == IPv4Network("192.168.60.0/24")
    assert networks.create(home, "third", clock=CLOCK).subnet == IPv4Network("10.91.1.0/24")
    assert [n.name for n in networks.list_all(home)] == ["lab", "lan", "third"]
    stored = json.loads((tmp_path / "home" / "networks" / "lan" / "network.json").read_text())
    assert stored == {"format": 1, "kind": "network", "name": "lan", "subnet": "10.91.0.0/24",
                      "created": "2026-01-02T03:04:05Z"}
    assert networks.load(home, "lan") == lan
    with pytest.raises(AlreadyExists):
        networks.create(home, "lan", clock=CLOCK)
    with pytest.raises(Refused, match="network 'lab'"):
        networks.create(home, "overlap", subnet="192.168.0.0/16", clock=CLOCK)
    assert not (tmp_path / "home" / "networks" / "overlap").exists()

    with pytest.raises(Refused, match="used by VM\\(s\\) db, web"):
        networks.delete(home, "lan", used_by=["web", "db"])
    assert networks.delete(home, "lan", used_by=[]) == lan
    assert not (tmp_path / "home" / "networks" / "lan").exists()
    with pytest.raises(NotFound):
        networks.delete(home, "lan", used_by=[])


def test_bad_names_and_damaged_records(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    for bad in ("", "a b", "../x", "-x"):
        with pytest.raises(InvalidArgument):
            networks.create(home, bad, clock=CLOCK)
    networks.create(home, "lan", clock=CLOCK)
    record = tmp_path / "home" / "networks" / "lan" / "network.json"
    record.chmod(0o600)
    for body in ("{", '{"format": 1, "kind": "network", "name": "lan", "subnet": "8.8.8.0/24", "created": "x"}',
                 '{"format": 2, "kind": "network", "name": "lan", "subnet": "10.1.0.0/24", "created": "x"}',
                 '{"format": 1, "kind": "network", "name": "lan", "subnet": "10.1.0.0/24", "created": "x", "y": 1}',
                 '{"format": 1, "kind": "network", "name": "other", "subnet": "10.1.0.0/24", "created": "x"}'):
        record.write_text(body)
        with pytest.raises(Corrupt):
            networks.load(home, "lan")
        assert networks.list_all(home) == []  # skipped, not fatal


def test_an_interrupted_create_leaves_a_folder_that_is_reused(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    (tmp_path / "home" / "networks" / "lan").mkdir(parents=True)  # as if killed before the record
    assert networks.list_all(home) == []
    assert networks.create(home, "lan", clock=CLOCK).name == "lan"


def test_socket_folder_moves_to_the_private_dir_when_the_home_is_deep(tmp_path: Path) -> None:
    shallow = NetworkPaths.of(Home.at(tmp_path / "h"), "lan")
    assert shallow.sockets == shallow.folder / "sock"
    deep = NetworkPaths.of(Home.at(tmp_path / ("d" * 90)), "lan")
    assert deep.sockets.parent.name.startswith("imgtool-") and deep.sockets.name.startswith("net-")
    assert len(str(deep.port("v" * 80).vm)) <= 107
    other = NetworkPaths.of(Home.at(tmp_path / ("e" * 90)), "lan")
    assert other.sockets != deep.sockets
