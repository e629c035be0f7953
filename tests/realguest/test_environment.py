"""A test environment of two real Debian 12 guests (scripts/build-debian-image) from one imgtool.yaml:

one network; the test's folder shared read-write into `a` and read-only into `b`; `up --wait` runs each
provision script once and reports its output and exit code; a file written on the host is read in the
guest and one written in the guest appears on the host; the read-only share refuses a write; `vm exec`
returns 0, 1 and 42, passes stdin, --env and --workdir; an ssh failure (a changed host key) is exit
code 13, not the command's; `vm cp` both ways keeps the mode; a TCP listener in `a` is reached from `b`
by name; a second `up` is a no-op; `down` leaves nothing behind.

Two boots under TCG, in parallel. The time of `up --wait` and the memory of each QEMU, virtiofsd and
the switch are printed (pytest -s shows them).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli import Cli
from tests.test_env_boot import processes_mentioning

pytestmark = [pytest.mark.realguest, pytest.mark.integration, pytest.mark.boot, pytest.mark.timeout(2400)]

FILE = """\
name: envr
networks:
  lan:
vms:
  a:
    image: lab/deb@1.0.0
    memory: 1024
    admin_user: admin
    ssh_key: id_ed25519.pub
    share: [./shared:/srv/shared]
    network: [lan]
    provision: |
      echo provisioned > /var/tmp/provisioned
      echo hello from provision a
  b:
    image: lab/deb@1.0.0
    memory: 1024
    admin_user: admin
    ssh_key: id_ed25519.pub
    share: ["./shared:/srv/shared:ro"]
    network: [lan]
    provision: |
      echo failing on purpose
      exit 3
"""
LISTEN = ("import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
          "s.bind(('0.0.0.0', 7777)); s.listen(1); c, _ = s.accept(); c.sendall(b'hello-from-a'); c.close()")
CONNECT = ("import socket, time\n"
           "for _ in range(60):\n"
           "    try:\n"
           "        s = socket.create_connection(('a', 7777), timeout=5); print(s.recv(100).decode()); break\n"
           "    except OSError: time.sleep(1)\n")


def imgtool(cli: Cli, *args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "imgtool", *args], env=cli.env_for(), input=input, text=True,
                          capture_output=True, timeout=timeout, check=False)


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def memory_report(cli: Cli, shared: Path) -> dict[str, int]:
    """RSS in MiB of each VM's QEMU, the virtiofsd processes, and the network's switch."""
    found: dict[str, int] = {}
    for vm in ("envr-a", "envr-b"):
        shown = cli.json("vm", "show", vm)
        assert isinstance(shown, dict)
        found[f"qemu {vm}"] = rss_kib(int(shown["pid"])) // 1024
    virtiofsd = [p for p in processes_mentioning("virtiofsd") if p in processes_mentioning(str(shared))]
    assert virtiofsd, "no virtiofsd serves the shared folder"
    found["virtiofsd (all)"] = sum(rss_kib(p) for p in virtiofsd) // 1024
    network = cli.json("network", "show", "envr-lan")
    assert isinstance(network, dict) and network["switch"]
    found["switch"] = rss_kib(int(network["switch"]["pid"])) // 1024
    return found


def diagnose(cli: Cli) -> str:
    """What cloud-init said in each guest (for a failed up --wait)."""
    found = []
    for vm in ("envr-a", "envr-b"):
        done = imgtool(cli, "vm", "exec", vm, "--user", "root", "--", "sh", "-c",
                       "cloud-init status --long; "
                       "grep -E 'WARN|ERROR|Traceback|Fail' /var/log/cloud-init.log | tail -20")
        found.append(f"--- {vm}\n{done.stdout}{done.stderr}")
    return "\n".join(found)


def test_a_two_vm_environment_of_real_guests(image: Path, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home", env={"IMGTOOL_ACCEL": "tcg"})
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/deb", "--publisher", "debian", "--offer", "debian-12", "--sku", "g",
        "--os-type", "linux", "--os-state", "generalized", "--min-memory", "512")
    cli("publish", "lab/deb", "--version", "1.0.0", "--os-disk", str(image))
    project = tmp_path / "proj"
    shared = project / "shared"
    shared.mkdir(parents=True)
    (shared / "from-host.txt").write_text("hello-from-host\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(project / "id_ed25519")], check=True)
    (project / "imgtool.yaml").write_text(FILE)
    yaml_file = str(project / "imgtool.yaml")
    try:
        started = time.monotonic()
        up = imgtool(cli, "--json", "up", "-f", yaml_file, "--wait", "--timeout", "900", timeout=1000)
        took = time.monotonic() - started
        assert up.returncode == 0, up.stdout + up.stderr + diagnose(cli)
        body: dict[str, Any] = json.loads(up.stdout)
        print(f"\nup --wait for two VMs: {took:.0f}s (TCG, bases included)")
        assert body["failed"] == {} and sorted(body["started"]) == ["envr-a", "envr-b"]
        assert body["provisioned"]["envr-a"]["exit_code"] == 0
        assert "hello from provision a" in body["provisioned"]["envr-a"]["output"]
        assert body["provisioned"]["envr-b"]["exit_code"] == 3
        assert "failing on purpose" in body["provisioned"]["envr-b"]["output"]
        print("memory (RSS, MiB):", memory_report(cli, shared))

        # shares: host -> guest, guest -> host, and the host refuses b's write
        assert imgtool(cli, "vm", "exec", "envr-a", "--", "cat", "/srv/shared/from-host.txt").stdout == \
            "hello-from-host\n"
        wrote = imgtool(cli, "vm", "exec", "envr-a", "--user", "root", "--", "sh", "-c",
                        "echo from-guest > /srv/shared/from-guest.txt")
        assert wrote.returncode == 0, wrote.stderr
        assert (shared / "from-guest.txt").read_text() == "from-guest\n"
        refused = imgtool(cli, "vm", "exec", "envr-b", "--user", "root", "--", "sh", "-c",
                          "echo x > /srv/shared/from-b.txt")
        assert refused.returncode != 0 and "Read-only file system" in refused.stderr
        assert not (shared / "from-b.txt").exists()

        # exec: exit codes, stdin, --env, --workdir
        for code in (0, 1, 42):
            assert imgtool(cli, "vm", "exec", "envr-a", "--", "sh", "-c", f"exit {code}").returncode == code
        assert imgtool(cli, "vm", "exec", "envr-a", "--", "tr", "a-z", "A-Z", input="hello\n").stdout == "HELLO\n"
        shown = imgtool(cli, "vm", "exec", "envr-a", "--env", "GREETING=hi there", "--workdir", "/srv/shared", "--",
                        "sh", "-c", 'echo "$GREETING"; pwd').stdout
        assert shown == "hi there\n/srv/shared\n"

        # cp both ways, modes kept
        local = tmp_path / "mode.txt"
        local.write_text("m\n")
        local.chmod(0o640)
        assert imgtool(cli, "vm", "cp", str(local), "envr-a:/tmp/").returncode == 0
        assert imgtool(cli, "vm", "exec", "envr-a", "--", "stat", "-c", "%a", "/tmp/mode.txt").stdout == "640\n"
        back = tmp_path / "back"
        back.mkdir()
        assert imgtool(cli, "vm", "cp", "envr-a:/etc/hostname", str(back)).returncode == 0
        assert (back / "hostname").read_text() == "a\n"
        missing = imgtool(cli, "vm", "cp", "envr-a:/nope", str(back))
        assert missing.returncode == 3 and "No such file" in missing.stderr

        # a TCP listener in a, reached from b by name
        imgtool(cli, "vm", "exec", "envr-a", "--", "sh", "-c",
                f"nohup python3 -c \"{LISTEN}\" </dev/null >/dev/null 2>&1 &")
        reached = imgtool(cli, "vm", "exec", "envr-b", "--", "python3", "-c", CONNECT)
        assert reached.stdout.strip() == "hello-from-a", reached.stderr

        # ssh's own failure: a changed host key is exit 13, not the command's code
        known = cli.home / "vms" / "envr-a" / "known_hosts"
        saved = known.read_text()
        other = subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")],
                               check=True)
        assert other.returncode == 0
        fake = (tmp_path / "other.pub").read_text().split()[:2]
        known.write_text(f"imgtool-vm-envr-a {' '.join(fake)}\n")
        changed = imgtool(cli, "vm", "exec", "envr-a", "--", "true")
        assert changed.returncode == 13 and "host key" in changed.stderr, changed.stderr
        known.write_text(saved)

        again = imgtool(cli, "--json", "up", "-f", yaml_file, "--wait", timeout=600)
        second: dict[str, Any] = json.loads(again.stdout)
        assert second["started"] == [] and {a["action"] for a in second["actions"]} == {"unchanged"}
        assert second["provisioned"]["envr-a"]["ran"] is False  # a provision script runs once
    finally:
        down = imgtool(cli, "--json", "down", "-f", yaml_file)
    assert down.returncode == 0, down.stderr
    assert cli.json("vm", "list") == [] and cli.json("network", "list") == []
    deadline = time.monotonic() + 60
    while (processes_mentioning(str(cli.home)) or processes_mentioning(str(shared))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_mentioning(str(cli.home)) == [] and processes_mentioning(str(shared)) == []
