"""A VM changed after vm new, then booted (TCG, one boot): the new forward is what QEMU listens on,
the grown disk is what QEMU was given, vm show names the address and every port, vm ssh-config
prints a block OpenSSH reads with this start's port, and a running VM's forwards and disk are left
alone with a hint to stop it."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.reliability.harness import fake_ssh_key
from tests.test_vm_boot import BOOT_TIMEOUT, build_image

pytestmark = [pytest.mark.integration, pytest.mark.boot]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_changed_vm_boots_as_changed(tmp_path: Path) -> None:
    image = build_image(tmp_path / "tiny.raw")
    cli = Cli(tmp_path / "home", env={"IMGTOOL_ACCEL": "tcg"})
    (tmp_path / "id.pub").write_text(fake_ssh_key() + "\n")
    (tmp_path / "id").write_text("not used: ssh -G only reads the config\n")
    cli("gallery", "create", "lab")
    cli("definition", "create", "lab/tiny", "--publisher", "p", "--offer", "o", "--sku", "s", "--os-type", "linux",
        "--os-state", "generalized", "--min-memory", "128", "--max-memory", "1024")
    cli("publish", "lab/tiny", "--version", "1.0.0", "--os-disk", str(image), "--allow-identity")
    cli("vm", "new", "web", "--image", "lab/tiny@1.0.0", "--ssh-key", str(tmp_path / "id.pub"), "--memory", "256")
    port = free_port()
    cli("vm", "update", "web", "--forward", f"{port}:80", "--disk-size", "300M")

    cli("vm", "start", "web")
    try:
        cli("vm", "console", "web", "--until", "READY", "--timeout", BOOT_TIMEOUT)
        shown = cli.json("vm", "show", "web")
        assert isinstance(shown, dict)
        argv = " ".join(shown["qemu_argv"])
        assert f"hostfwd=tcp:127.0.0.1:{port}-:80" in argv
        assert shown["address"] == "127.0.0.1"
        assert shown["ports"] == [{"host": shown["ssh_port"], "guest": 22, "purpose": "ssh"},
                                  {"host": port, "guest": 80, "purpose": "forward"}]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # QEMU listens on the forward added after vm new
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(cli.home / "vms" / "web" /
                                                                              "disk-os.qcow2")],
                              capture_output=True, text=True, check=True).stdout
        assert '"virtual-size": 314572800' in info

        done = cli("vm", "ssh-config", "web")
        assert done.stdout.startswith("Host web\n") and f"  Port {shown['ssh_port']}\n" in done.stdout
        assert "StrictHostKeyChecking yes" in done.stdout and "imgtool vm wait web" in done.stderr
        config = tmp_path / "ssh_config"
        config.write_text(done.stdout)
        seen = subprocess.run(["ssh", "-G", "-F", str(config), "web"], capture_output=True, text=True,
                              check=True).stdout.splitlines()
        assert f"port {shown['ssh_port']}" in seen and "user admin" in seen
        assert f"identityfile {tmp_path / 'id'}" in seen
        as_json = cli.json("vm", "ssh-config", "web")
        assert isinstance(as_json, dict) and as_json["port"] == shown["ssh_port"] and as_json["config"] == done.stdout
        assert cli("vm", "ssh-config").stdout == done.stdout  # every running VM: this one
        assert cli.json("vm", "ssh-config") == [as_json]

        for argv_ in (["vm", "update", "web", "--forward", "9999:99"], ["vm", "resize", "web", "--disk-size", "1G"]):
            refused = cli(*argv_, ok=False)
            assert refused.returncode == 5 and "imgtool vm stop web" in refused.stderr
    finally:
        cli("vm", "stop", "web", "--timeout", "0")
