"""`vm ssh-config`: an OpenSSH `Host` block for a running VM, as `vagrant ssh-config` and Lima give.

With it, plain `ssh NAME`, `scp`, `rsync` and editors' remote modes reach the VM. The block pins the
VM's host key strictly (StrictHostKeyChecking yes) against the VM's own known_hosts, under the same
alias `vm ssh` and `vm wait` record it with: the forwarded port changes at every start, the alias
does not. The port is this start's, so the block is valid until the VM stops.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import Refused
from imgtool.home import Home
from imgtool.vm import state as vmstate
from imgtool.vm.record import load, vm_dir

KNOWN_HOSTS = "known_hosts"  # the file vm ssh and vm wait record the host key in (imgtool/guest/ssh.py)
ADDRESS = "127.0.0.1"  # QEMU's user-mode network forwards the VM's ports on loopback only


@dataclass(frozen=True)
class SshHost:
    name: str
    port: int
    user: str | None  # None: a specialized image, logged in to with its own accounts
    identity: Path | None  # the private half of the seeded public key, when it is there
    known_hosts: Path

    @property
    def alias(self) -> str:
        return f"imgtool-vm-{self.name}"

    def key_recorded(self) -> bool:
        """Whether the VM's host key is already in its known_hosts (else a strict ssh refuses it)."""
        try:
            text = self.known_hosts.read_text()
        except OSError:
            return False
        return any(line.split(" ", 1)[0] == self.alias for line in text.splitlines())


def for_vm(home: Home, name: str) -> SshHost:
    """The SSH facts of running VM `name`; a stopped VM has no port yet and is refused."""
    record = load(home, name)
    status = vmstate.running_state(home, name)
    if status is None:
        raise Refused(f"VM '{name}' is not running; its SSH port is chosen when it starts",
                      hint=f"start it (imgtool vm start {name}), then imgtool vm ssh-config {name}")
    key = (record.seed.ssh_key if record.seed else None) or ""
    private = Path(key[:-4]) if key.endswith(".pub") and Path(key[:-4]).is_file() else None
    return SshHost(name=name, port=status.ssh_port, user=record.seed.admin_user if record.seed else None,
                   identity=private, known_hosts=vm_dir(home, name) / KNOWN_HOSTS)


def running(home: Home) -> list[SshHost]:
    """The SSH facts of every running VM, by name; none running is refused (there is nothing to print)."""
    names = sorted(p.parent.name for p in home.vms.glob("*/vm.json")) if home.vms.is_dir() else []
    hosts = []
    for name in names:
        with contextlib.suppress(Refused):  # stopped (or stopping right now): no block
            hosts.append(for_vm(home, name))
    if not hosts:
        raise Refused("no VM is running; SSH ports are chosen when VMs start",
                      hint="start one (imgtool vm start NAME), then imgtool vm ssh-config")
    return hosts


def _quoted(path: Path) -> str:
    text = str(path.absolute())
    return f'"{text}"' if any(c.isspace() for c in text) else text


def render(host: SshHost) -> str:
    """The `Host` block, one option a line, as ssh_config(5) reads it."""
    lines = [f"Host {host.name}",
             f"  HostName {ADDRESS}",
             f"  Port {host.port}"]
    if host.user:
        lines.append(f"  User {host.user}")
    if host.identity:
        lines += [f"  IdentityFile {_quoted(host.identity)}", "  IdentitiesOnly yes"]
    lines += [f"  HostKeyAlias {host.alias}",
              f"  UserKnownHostsFile {_quoted(host.known_hosts)}",
              "  StrictHostKeyChecking yes",
              "  LogLevel ERROR"]
    return "\n".join(lines) + "\n"
