"""Networks between real QEMU guests (TCG): three tiny-image VMs on one imgtool network reach each other by
name through the network's switch, a VM killed with SIGKILL leaves, and the others keep talking.

Each VM's argv is what a VM start builds (imgtool.tools.qemu.build_argv) plus the network NIC
(imgtool.net.nic.nic_argv); its seed is the real one (imgtool.vm.seed) carrying the tiny image's
`#tiny-net` (address on the NIC with this MAC), `#tiny-host` (peers' names) and `#tiny-after` lines:
a loop that pings each peer once a second and prints `REACH <peer> <n>` on the console when it answers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from imgtool.errors import Refused
from imgtool.home import Home
from imgtool.net import control, networks, nic, subnet
from imgtool.net.layout import NetworkPaths
from imgtool.tools import ports, qemu
from imgtool.vm import seed
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ROOT = Path(__file__).resolve().parent.parent
WAIT = 240.0  # bounds on waiting (TCG boots of the tiny image take ~6 s alone, longer when the host is busy)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tools("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "syslinux", "mcopy")
    out = tmp_path_factory.mktemp("image") / "tiny.raw"
    subprocess.run([str(ROOT / "scripts" / "build-test-image"), str(out)], check=True, capture_output=True)
    return out


class Lab:
    """VMs booted from the tiny image with one NIC on network `lan`; all killed at the end."""

    def __init__(self, root: Path, image: Path) -> None:
        self.root, self.image = root, image
        self.home = Home.at(root / "home")
        self.record = networks.create(self.home, "lan", clock=lambda: "2026-01-01T00:00:00Z")
        self.paths = NetworkPaths.of(self.home, "lan")
        self.pids: dict[str, int] = {}

    def address(self, vm: str) -> str:
        return str(self.record.subnet.network_address + 10 + ord(vm[0]) - ord("a"))

    def boot(self, vm: str, peers: list[str]) -> int:
        mac = nic.mac_for("lan", vm)
        cidr = subnet.interface_address(subnet.parse_address(self.address(vm), self.record.subnet, network="lan"),
                                        self.record.subnet)
        pings = "; ".join(f"ping -c 1 -W 2 vm{p} >/dev/null && echo REACH vm{p} $i" for p in peers)
        user_data = "\n".join(["#cloud-config", f"#tiny-net: {mac} {cidr}",
                               *(f"#tiny-host: {self.address(p)} vm{p}" for p in peers),
                               f"#tiny-after: i=0; while [ $i -lt 900 ]; do {pings}; i=$((i+1)); sleep 1; done", ""])
        folder = self.root / vm
        folder.mkdir()
        seed.write_seed(folder / "seed.iso", seed.Provisioning(f"iid-{vm}", f"vm{vm}", "tester", user_data=user_data))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image),
                        str(folder / "disk.qcow2")], check=True)
        spec = qemu.VmSpec(name=vm, arch="x86_64", cpus=1, memory_mib=128, disks=(qemu.Drive(folder / "disk.qcow2"),),
                           seed=folder / "seed.iso", firmware="bios", ovmf_code=None, ovmf_vars=None, accel="tcg",
                           ssh_port=ports.free_port(), qmp_socket=folder / "qmp.sock",
                           serial_log=folder / "serial.log", pid_file=folder / "qemu.pid")
        argv = qemu.build_argv(spec) + nic.nic_argv(nic.Nic(1, mac, control.prepare(self.paths, vm)))
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        pid = int((folder / "qemu.pid").read_text())
        self.pids[vm] = pid
        control.attach(self.paths, vm, pid=pid, mac=mac)
        return pid

    def console(self, vm: str) -> str:
        log = self.root / vm / "serial.log"
        return log.read_bytes().decode("utf-8", "replace") if log.exists() else ""

    def reached(self, vm: str, peer: str) -> int:
        """How many pings from `vm` to `peer` were answered so far."""
        return len(re.findall(rf"^REACH vm{peer} \d+\r?$", self.console(vm), re.M))

    def kill(self, vm: str) -> None:
        pid = self.pids.pop(vm)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{vm} to die")


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout:g}s for {what}")
        time.sleep(0.5)


@pytest.fixture
def lab(tmp_path: Path, image: Path) -> Iterator[Lab]:
    made = Lab(tmp_path, image)
    yield made
    for vm in list(made.pids):
        made.kill(vm)
    control.stop(made.paths)


def test_three_vms_reach_each_other_by_name_and_survive_a_neighbours_sigkill(lab: Lab) -> None:
    lab.boot("a", ["b", "c"])
    lab.boot("b", ["a", "c"])
    wait_until(lambda: lab.reached("a", "b") > 0 and lab.reached("b", "a") > 0,
               f"a and b to reach each other:\n{lab.console('a')[-1500:]}\n{lab.console('b')[-1500:]}")
    lab.boot("c", ["a", "b"])
    wait_until(lambda: lab.reached("c", "a") > 0 and lab.reached("c", "b") > 0 and lab.reached("a", "c") > 0,
               f"c to join:\n{lab.console('c')[-1500:]}")
    status = control.status(lab.paths)
    assert status is not None and sorted(p["vm"] for p in status["ports"]) == ["a", "b", "c"]
    switch_pid = status["pid"]
    assert all(p["dropped"] == 0 for p in status["ports"])

    lab.kill("a")
    wait_until(lambda: control.ports(lab.paths) == ["b", "c"], "the switch to drop a's port")
    before = lab.reached("b", "c"), lab.reached("c", "b")
    wait_until(lambda: lab.reached("b", "c") >= before[0] + 3 and lab.reached("c", "b") >= before[1] + 3,
               "b and c to go on talking after a was killed")
    after = control.status(lab.paths)
    assert after is not None and after["pid"] == switch_pid  # the same switch, unharmed

    with pytest.raises(Refused, match="used by VM\\(s\\) b, c"):
        networks.delete(lab.home, "lan", used_by=[])
    lab.kill("b")
    lab.kill("c")
    wait_until(lambda: control.status(lab.paths) is None, "the switch to exit after the last VM left", 60.0)
    assert not lab.paths.pid_file.exists()
    networks.delete(lab.home, "lan", used_by=[])
    assert not lab.paths.folder.exists()
