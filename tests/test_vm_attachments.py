"""Shares and networks on VMs without QEMU: record fields (old records still read), the seed's mounts,
network-config and hosts lines, vm new's checks (nothing made on a bad share), addresses chosen once,
and network delete refused while a VM is on it. VMs are made from a `blake3:` source (test_lifecycle)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pycdlib
import pytest
import yaml

from imgtool.errors import InvalidArgument, NotFound, Refused
from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries as gallery
from imgtool.gallery.image_versions import PublishRequest
from imgtool.gallery.model import Definition
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.net import networks
from imgtool.vm import attachments, lifecycle, seed
from imgtool.vm.record import NetworkAttachment, ShareRecord, load, vms_on_network
from imgtool.vm.shares import Share
from tests.cli import Cli
from tests.test_lifecycle import new_disk
from tests.test_seed import pubkey
from tests.test_vmrecord import RECORD, write_record


def clock() -> str:
    return "2026-01-01T00:00:00Z"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    made = Home.at(tmp_path / "home")
    gallery.create_gallery(made, "team")
    gallery.create_definition(made, Definition("team", "base", "acme", "base", "v1", "linux", "generalized"))
    # Random bytes, no guest OS the audit can read: published with the override.
    publish(made, PublishRequest(DefinitionRef("team", "base"), Version.parse("1.0.0"), os_disk=new_disk(made),
                                 allow_unaudited=True))
    return made


def new(home: Home, name: str, tmp_path: Path, **changes: object) -> lifecycle.NewVm:
    key = tmp_path / "id.pub"
    key.write_text(pubkey() + "\n")
    return lifecycle.NewVm(name=name, image="team/base@1.0.0", memory_mib=256, ssh_key=key, **changes)  # type: ignore[arg-type]


def iso_file(path: Path, name: str) -> str:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        return out.getvalue().decode()
    finally:
        iso.close()


def test_an_old_record_reads_and_new_fields_round_trip(tmp_path: Path) -> None:
    home = Home.at(tmp_path)
    write_record(home, "a", RECORD)
    old = load(home, "a")
    assert old.shares == () and old.networks == () and old.environment is None
    assert "shares" not in old.to_json() and "networks" not in old.to_json()  # absent unless set
    body = {**RECORD, "name": "b", "shares": [{"host": "/src", "guest": "/srv", "readonly": True}],
            "networks": [{"network": "lan", "mac": "52:54:00:01:02:03", "address": "10.91.0.2", "prefix": 24}],
            "environment": {"project": "p", "settings": {"image": "g/d"}}}
    write_record(home, "b", body)
    made = load(home, "b")
    assert made.shares == (ShareRecord("/src", "/srv", True),)
    assert made.networks == (NetworkAttachment("lan", "52:54:00:01:02:03", "10.91.0.2", 24),)
    assert made.to_json()["environment"] == {"project": "p", "settings": {"image": "g/d"}}


def test_the_seed_names_mounts_nics_and_peers() -> None:
    mount = ("imgtool:share0", "/srv/src", "virtiofs", "defaults,nofail,ro", "0", "0")
    p = seed.Provisioning("iid-1", "a", "me", mounts=(mount,),
                          nics=(seed.GuestNic("52:54:00:aa:bb:cc", "10.91.0.2/24"),), hosts=(("10.91.0.3", "b"),))
    config = yaml.safe_load(seed.cloud_config(p))
    assert config["mounts"] == [["imgtool:share0", "/srv/src", "virtiofs", "defaults,nofail,ro", "0", "0"]]
    assert config["bootcmd"] == [["sh", "-c", "sed -i '/ # imgtool-network$/d' /etc/hosts && "
                                  "printf '%s\\n' '10.91.0.3 b # imgtool-network' >> /etc/hosts"]]
    network = yaml.safe_load(seed.network_config(p) or "")
    assert network == {"version": 2, "ethernets": {
        "user0": {"match": {"macaddress": seed.USER_NIC_MAC}, "dhcp4": True},
        "net1": {"match": {"macaddress": "52:54:00:aa:bb:cc"}, "addresses": ["10.91.0.2/24"], "dhcp4": False}}}
    assert seed.network_config(seed.Provisioning("iid-1", "a", "me")) is None  # cloud-init's default stays


@pytest.mark.parametrize("change", [
    {"nics": (seed.GuestNic("52:54:00:AA:bb:cc", "10.91.0.2/24"),)},
    {"nics": (seed.GuestNic("52:54:00:aa:bb:cc", "10.91.0.2"),)},
    {"hosts": (("10.91.0.3", "b; reboot"),)},
    {"hosts": (("10.91.0.300", "b"),)},
    {"mounts": (("imgtool:share0", "/srv x", "virtiofs", "defaults", "0", "0"),)},
])
def test_network_values_that_could_break_a_guest_file_are_refused(change: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        seed.validate(seed.Provisioning("iid-1", "a", "me", **change))  # type: ignore[arg-type]


def test_vm_new_with_shares_and_networks_records_them_and_seeds_the_guest(home: Home, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    networks.create(home, "lan", subnet="10.91.7.0/24", clock=clock)
    a = lifecycle.create(home, new(home, "a", tmp_path, shares=(Share(src, "/srv/src", True),),
                                   networks=(("lan", "10.91.7.20"),)))
    b = lifecycle.create(home, new(home, "b", tmp_path, networks=(("lan", None),)))
    assert a.shares == (ShareRecord(str(src.resolve()), "/srv/src", True),)
    assert a.networks[0].address == "10.91.7.20" and a.networks[0].prefix == 24
    assert b.networks[0].address == "10.91.7.2" and b.networks[0].mac != a.networks[0].mac  # the next free one
    folder = home.vms / "b"
    assert yaml.safe_load(iso_file(folder / "seed.iso", "network-config"))["ethernets"]["net1"]["addresses"] == \
        ["10.91.7.2/24"]
    assert "10.91.7.20 a # imgtool-network" in iso_file(folder / "seed.iso", "user-data")
    assert (folder / attachments.PROVISIONING).stat().st_mode & 0o777 == 0o600
    # a, made before b, learns b's name when its seed is rebuilt (at each start)
    refreshed = attachments.refresh_seed(home, load(home, "a"))
    assert refreshed.seed is not None and refreshed.seed.digest != (a.seed.digest if a.seed else None)
    user_data = iso_file(home.vms / "a" / "seed.iso", "user-data")
    assert "10.91.7.2 b # imgtool-network" in user_data and '"imgtool:share0", "/srv/src", "virtiofs"' in user_data
    with pytest.raises(Refused, match="used by VM\\(s\\) a, b"):
        networks.delete(home, "lan", used_by=[r.name for r in vms_on_network(home, "lan")])


@pytest.mark.parametrize(("problem", "error"), [("missing", NotFound), ("file", InvalidArgument),
                                                  ("home", InvalidArgument), ("taken", InvalidArgument),
                                                  ("net", NotFound), ("outside", InvalidArgument)])
def test_vm_new_refuses_a_bad_share_or_network_and_makes_nothing(home: Home, tmp_path: Path, problem: str,
                                                                  error: type[Exception]) -> None:
    networks.create(home, "lan", subnet="10.91.7.0/24", clock=clock)
    (tmp_path / "f").write_text("x")
    if problem == "taken":
        lifecycle.create(home, new(home, "first", tmp_path, networks=(("lan", "10.91.7.9"),)))
    given: dict[str, object] = {"missing": {"shares": (Share(tmp_path / "nope", "/srv"),)},
                                "file": {"shares": (Share(tmp_path / "f", "/srv"),)},
                                "home": {"shares": (Share(home.root / "store", "/srv", True),)},
                                "taken": {"networks": (("lan", "10.91.7.9"),)},
                                "net": {"networks": (("wan", None),)},
                                "outside": {"networks": (("lan", "10.91.8.9"),)}}[problem]  # type: ignore[assignment]
    with pytest.raises(error):
        lifecycle.create(home, new(home, "vm", tmp_path, **given))
    assert not (home.vms / "vm").exists()


def test_the_cli_wires_shares_networks_and_network_commands(home: Home, tmp_path: Path) -> None:
    cli = Cli(home.root)
    src = tmp_path / "src"
    src.mkdir()
    (tmp_path / "id.pub").write_text(pubkey() + "\n")
    created = cli.json("network", "create", "lan")
    assert isinstance(created, dict) and created["subnet"] == "10.91.0.0/24" and created["vms"] == []
    assert created["project"] is None and created["switch"] is None
    cli("vm", "new", "web", "--image", "team/base@1.0.0", "--memory", "256", "--ssh-key", str(tmp_path / "id.pub"),
        "--share", f"{src}:/srv/src:ro", "--network", "lan:10.91.0.10")
    shown = cli.json("vm", "show", "web")
    assert isinstance(shown, dict)
    assert shown["shares"] == [{"host": str(src.resolve()), "guest": "/srv/src", "readonly": True}]
    assert shown["networks"][0]["address"] == "10.91.0.10"
    text = cli("vm", "show", "web").stdout
    assert "share imgtool:share0:" in text and "network lan:" in text and "10.91.0.10/24" in text
    listed = cli.json("network", "show", "lan")
    assert isinstance(listed, dict) and listed["vms"] == [{"name": "web", "address": "10.91.0.10",
                                                           "mac": shown["networks"][0]["mac"]}]
    refused = cli("network", "delete", "lan", ok=False)
    assert refused.returncode == 5 and "web" in refused.stderr and "imgtool vm delete web" in refused.stderr
    bad = cli("vm", "new", "x", "--image", "team/base@1.0.0", "--share", f"{home.root}:/srv", ok=False)
    assert bad.returncode == 2 and "imgtool home" in bad.stderr and not (home.vms / "x").exists()
    updated = cli.json("vm", "update", "web", "--no-shares")
    assert isinstance(updated, dict) and updated["shares"] == []
    cli("vm", "delete", "web")
    assert json.loads(cli("--json", "network", "delete", "lan").stdout) == {"deleted": "lan"}
