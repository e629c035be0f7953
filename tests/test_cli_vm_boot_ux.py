"""What a user meets around a running VM, with a real boot (TCG): hints that name a command that
works from that state, vm ssh's bounded wait with a clear end, extra forwards (and a taken host port
refused at start), one state/port place in vm list and vm show, restart, a forced stop's warning,
and console --until on a stopped VM. Two boots (start, restart)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.reliability.harness import fake_ssh_key
from tests.test_vm_boot import BOOT_TIMEOUT, build_image

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def test_a_running_vm_from_the_users_side(tmp_path: Path) -> None:
    image = build_image(tmp_path / "tiny.raw")
    cli = Cli(tmp_path / "home", env={"IMGTOOL_ACCEL": "tcg"})
    (tmp_path / "id.pub").write_text(fake_ssh_key() + "\n")
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/tiny", "--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux",
        "--os-state", "generalized", "--min-memory", "128", "--max-memory", "1024")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")  # golden identity

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        cli("vm", "new", "web", "--image", "lab/tiny@1.0.0", "--ssh-key", str(tmp_path / "id.pub"), "--memory", "256",
            "--forward", f"{port}:80", "--disk-size", "256M")
        refused = cli("vm", "start", "web", ok=False)  # the host port is taken: said before QEMU is run
        assert refused.returncode == 5 and f"127.0.0.1:{port}" in refused.stderr and "in use" in refused.stderr
    size = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(tmp_path / "home" / "vms" / "web" /
                                                                              "disk-os.qcow2")],
                                     capture_output=True, text=True, check=True).stdout)["virtual-size"]
    assert size == 256 << 20

    started = cli("vm", "start", "web").stdout
    assert "imgtool vm ssh web" in started and "PORT" not in started
    cli("vm", "console", "web", "--until", "READY", "--timeout", BOOT_TIMEOUT)
    shown, listed = cli.json("vm", "show", "web"), cli.json("vm", "list")
    assert isinstance(shown, dict) and isinstance(listed, list)
    assert shown["state"] == listed[0]["state"] == "running"
    assert isinstance(shown["ssh_port"], int) and shown["ssh_port"] == listed[0]["ssh_port"]
    assert shown["forwards"] == [{"host": port, "guest": 80}]
    assert any(f"hostfwd=tcp:127.0.0.1:{port}-:80" in arg for arg in shown["qemu_argv"])

    # Hints that lead somewhere from a running VM: stop it (snapshotting it would be refused too).
    for argv in (["vm", "snapshot", "create", "web", "s1"], ["vm", "update", "web", "--memory", "512"],
                 ["publish", "lab/tiny", "--version", "1.0.1", "--os-disk", "vm:web", "--os-state", "generalized"]):
        done = cli(*argv, ok=False)
        assert done.returncode == 5 and "imgtool vm stop web" in done.stderr, done.stderr
        assert "snapshot it" not in done.stderr

    # The test image runs no sshd: vm ssh waits, says so, and ends with a clear message, not ssh's.
    nothing = cli("vm", "ssh", "web", "--wait", "3", ok=False)
    assert nothing.returncode == 9
    assert f"waiting up to 3s for SSH on 127.0.0.1:{shown['ssh_port']}" in nothing.stderr
    assert f"nothing answers SSH on 127.0.0.1:{shown['ssh_port']}" in nothing.stderr
    assert "Connection reset" not in nothing.stderr and "Permanently added" not in nothing.stderr

    restarted = cli("vm", "restart", "web").stdout
    assert restarted.startswith("restarted VM web")
    cli("vm", "console", "web", "--until", "READY", "--timeout", BOOT_TIMEOUT)
    forced = cli("vm", "stop", "web", "--timeout", "0")
    assert "stopped hard" in forced.stderr
    stopped = cli("vm", "console", "web", "--until", "NEVER-PRINTED", ok=False)
    assert stopped.returncode == 5 and "is not running" in stopped.stderr and "vm start web" in stopped.stderr
    assert cli.json("vm", "show", "web")["ssh_port"] is None  # type: ignore[index]
