"""A test environment from one imgtool.yaml, through the real command line and real QEMU guests (TCG):
two tiny-image VMs on one network, the test's folder shared read-write into one and read-only into
the other (enforced by the host), each reaching the other by name; `up` killed halfway and run again
completes; a second `up` changes nothing; `down` leaves nothing behind (no VM, network, switch or
virtiofsd).

The tiny image has no cloud-init: its init reads `#tiny-net` (address on the NIC with this MAC),
`#tiny-host` (a peer's name) and `#tiny-after` (commands after boot) lines from the seed's user-data,
which the file passes as each VM's user_data. What cloud-init makes of the seed's own mounts,
network-config and hosts lines is checked in tests/test_vm_attachments.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imgtool.net import nic
from imgtool.vm import shares
from tests.cli import Cli
from tests.conftest import require_tools
from tests.reliability.harness import fake_ssh_key
from tests.test_vm_boot import build_image

pytestmark = [pytest.mark.integration, pytest.mark.boot]
WAIT = 300.0
SUBNET = "10.91.77"

FILE = """\
name: envt
networks:
  lan: {subnet: %(subnet)s.0/24}
vms:
  a:
    image: lab/tiny@1.0.0
    memory: 160
    ssh_key: id.pub
    share: [./shared:/mnt/s]
    network: ["lan:%(subnet)s.10"]
    user_data: a.cfg
  b:
    image: lab/tiny@1.0.0
    memory: 160
    ssh_key: id.pub
    share: ["./shared:/mnt/s:ro"]
    network: ["lan:%(subnet)s.11"]
    user_data: b.cfg
"""


def user_data(me: str, peer: str, address: str, peer_address: str, guest: str) -> str:
    mac = nic.mac_for("envt-lan", f"envt-{me}")
    pings = f"i=0; while [ $i -lt 900 ]; do ping -c 1 -W 2 {peer} >/dev/null && echo REACH {peer} $i; " \
            "i=$((i+1)); sleep 1; done"
    return "\n".join(["#cloud-config", f"#tiny-net: {mac} {address}/24", f"#tiny-host: {peer_address} {peer}",
                      "#tiny-after: mkdir -p /mnt/s && mount -t virtiofs imgtool:share0 /mnt/s && echo MOUNTED; "
                      + guest,
                      f"#tiny-after: {pings}", ""])


def console(home: Path, vm: str) -> str:
    log = home / "vms" / vm / "serial.log"
    return log.read_bytes().decode("utf-8", "replace") if log.exists() else ""


def wait_until(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"waited {WAIT:g}s for {what}")
        time.sleep(0.5)


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if text.encode() in cmdline and stat.rpartition(")")[2].split()[0] != "Z":
                found.append(int(entry.name))
    return found


def test_up_a_two_vm_environment_kill_it_halfway_up_again_and_down(tmp_path: Path) -> None:
    require_tools("unshare")
    if not Path(shares.VIRTIOFSD).is_file():
        require_tools("virtiofsd")
    image = build_image(tmp_path / "tiny.raw")
    home = tmp_path / "home"
    cli = Cli(home, env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/tiny", "--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux",
        "--os-state", "generalized", "--min-memory", "128")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")

    project = tmp_path / "proj"
    shared = project / "shared"
    shared.mkdir(parents=True)
    shared.chmod(0o755)
    (shared / "from-host.txt").write_text("hello-from-host\n")
    (project / "id.pub").write_text(fake_ssh_key() + "\n")
    (project / "imgtool.yaml").write_text(FILE % {"subnet": SUBNET})
    (project / "a.cfg").write_text(user_data("a", "b", f"{SUBNET}.10", f"{SUBNET}.11",
                                             'echo "READ $(cat /mnt/s/from-host.txt)"; echo from-a > /mnt/s/from-a.txt'
                                             " && sync && echo A-WROTE"))
    (project / "b.cfg").write_text(user_data("b", "a", f"{SUBNET}.11", f"{SUBNET}.10",
                                             "echo x > /mnt/s/from-b.txt || echo B-WRITE-REFUSED"))
    yaml_file = str(project / "imgtool.yaml")

    # up, killed as soon as its first VM exists; the second up completes what the first began.
    first = subprocess.Popen([sys.executable, "-m", "imgtool", "up", "-f", yaml_file],
                             env=cli.env_for(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    wait_until(lambda: (home / "vms" / "envt-a" / "vm.json").exists() or first.poll() is not None, "envt-a")
    first.send_signal(signal.SIGKILL)
    first.wait()
    try:
        again = cli.json("up", "-f", yaml_file)
        assert isinstance(again, dict) and again["failed"] == {}
        assert {a["name"]: a["action"] for a in again["actions"]}["envt-lan"] == "unchanged"

        wait_until(lambda: "A-WROTE" in console(home, "envt-a") and "B-WRITE-REFUSED" in console(home, "envt-b"),
                   f"the shares:\n{console(home, 'envt-a')[-1500:]}\n{console(home, 'envt-b')[-1500:]}")
        assert "READ hello-from-host" in console(home, "envt-a")
        assert (shared / "from-a.txt").read_text() == "from-a\n"  # written in the guest, seen on the host
        assert not (shared / "from-b.txt").exists()  # b mounted it read-write; the host said no
        assert re.search(r"from-b\.txt: Read-only file system", console(home, "envt-b"))
        wait_until(lambda: re.search(r"^REACH b \d+", console(home, "envt-a"), re.M)
                   and re.search(r"^REACH a \d+", console(home, "envt-b"), re.M),
                   f"a and b to reach each other by name:\n{console(home, 'envt-a')[-1500:]}")

        noop = cli.json("up", "-f", yaml_file)
        assert isinstance(noop, dict) and noop["started"] == []
        assert {a["action"] for a in noop["actions"]} == {"unchanged"}
        status = cli.json("status", "-f", yaml_file)
        assert isinstance(status, dict)
        assert [(v["name"], v["state"], v["networks"]) for v in status["vms"]] == [
            ("envt-a", "running", [{"network": "envt-lan", "address": f"{SUBNET}.10"}]),
            ("envt-b", "running", [{"network": "envt-lan", "address": f"{SUBNET}.11"}])]
        shown = cli.json("network", "show", "envt-lan")
        assert isinstance(shown, dict) and shown["project"] == "envt"
        assert sorted(p["vm"] for p in shown["switch"]["ports"]) == ["envt-a", "envt-b"]
        refused = cli("network", "delete", "envt-lan", ok=False)
        assert refused.returncode == 5 and "envt-a" in refused.stderr
    finally:
        down = cli("--json", "down", "-f", yaml_file, ok=False)
    assert down.returncode == 0, down.stderr
    assert [(a["action"], a["name"]) for a in json.loads(down.stdout)["actions"]] == [
        ("delete", "envt-a"), ("delete", "envt-b"), ("delete", "envt-lan")]
    assert cli.json("vm", "list") == [] and cli.json("network", "list") == []
    wait_until(lambda: not processes_mentioning(str(home)), "QEMU, virtiofsd and the switch to exit")
    assert textwrap.dedent(cli("down", "-f", yaml_file).stdout).startswith("nothing of environment envt")
