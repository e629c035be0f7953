"""`vm exec` and `vm cp`: a command in the guest, files in and out, over the VM's SSH (imgtool.guest.ssh).

exec: the exit code is the command's. ssh reports its own failures (no connection, host key
changed, key refused) with exit code 255, which a command could also return; so a probe (`ssh true`,
BatchMode) runs first and turns any ssh failure into one SshFailed saying which, before the command
runs. After a good probe, 255 is the command's (or a connection lost mid-way, which ssh reports the
same way; nothing can tell those apart).

The remote command line is built here, each word quoted for the guest's shell:
`cd DIR && exec sudo -n -u USER -H -- env K=V CMD ARG...` (the parts given).

cp: `scp -p` (SFTP; modes and times kept, `-r` for folders) with the same options. One side is the
VM's NAME:PATH, the other local; a word is a VM path when what comes before its first colon is a
VM name with no slash (so ./a:b and /x:y stay local, as with scp).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import ImgtoolError, InvalidArgument, NotFound, StorageFull, ToolFailed
from imgtool.guest import ssh
from imgtool.home import Home
from imgtool.names import check_name
from imgtool.tools import run

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")


class SshFailed(ImgtoolError):
    """ssh itself failed (not the command it ran): refused, unreachable, host key changed, key refused."""

    exit_code = 13
    category = "ssh-failed"


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    user: str | None = None  # run as this guest user (sudo from the admin user)
    env: tuple[tuple[str, str], ...] = ()
    workdir: str | None = None


def parse_env(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not _ENV_NAME.fullmatch(name):
        raise InvalidArgument(f"--env '{text}' is not NAME=VALUE", hint="e.g. --env LANG=C.UTF-8")
    return name, value


def remote_line(command: Command) -> str:
    """The shell line the guest runs (every word quoted: nothing the user typed is re-split)."""
    if not command.argv:
        raise InvalidArgument("no command given", hint="imgtool vm exec NAME -- CMD [ARG...]")
    if command.user is not None and not _USER.fullmatch(command.user):
        raise InvalidArgument(f"--user '{command.user}' is not a user name", hint="e.g. --user root")
    words: list[str] = ["exec"]
    if command.user is not None:
        words += ["sudo", "-n", "-u", command.user, "-H", "--"]
    if command.env:
        # No `--` after the assignments: env stops at its first non-option, so a `--` there would be
        # taken for the command's name.
        words += ["env", *(f"{k}={v}" for k, v in command.env)]
    line = shlex.join([*words, *command.argv])
    return f"cd {shlex.quote(command.workdir)} && {line}" if command.workdir else line


def exec_argv(home: Home, name: str, command: Command, *, tty: bool) -> list[str]:
    options = ssh.options(home, name, batch=True)
    return ["ssh", *options, "-t" if tty else "-T", f"{ssh.user(home, name)}@127.0.0.1", remote_line(command)]


def probe(home: Home, name: str) -> None:
    """SshFailed (saying which way) unless `ssh true` works with the VM's key and known host key."""
    result = run.run(ssh.argv(home, name, ["true"]), timeout=ssh.PROBE_TIMEOUT + 10, check=False)
    if result.returncode != 0:
        raise ssh_failure(name, result.stderr)


def _tail(stderr: str) -> str:
    """The last two lines of a tool's stderr, bounded: what an error quotes of it."""
    return " ".join(stderr.strip().splitlines()[-2:])[:300] or "no message"


def ssh_failure(name: str, stderr: str) -> SshFailed:
    """What ssh's stderr says went wrong, as one error with a hint that fits it."""
    tail = _tail(stderr)
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr or "Host key verification failed" in stderr:
        return SshFailed(f"the SSH host key of VM '{name}' changed since imgtool first saw it",
                         hint=f"if the guest was re-created or re-keyed on purpose, remove the old key: "
                              f"ssh-keygen -R imgtool-vm-{name} -f <home>/vms/{name}/known_hosts")
    if "Connection refused" in stderr or "Connection reset" in stderr or "timed out" in stderr \
            or "Connection closed" in stderr or "kex_exchange_identification" in stderr:
        return SshFailed(f"cannot reach SSH in VM '{name}': {tail}",
                         hint=f"the guest may still be booting or run no sshd: imgtool vm wait {name}, or read "
                              f"imgtool vm console {name}")
    if "Permission denied" in stderr:
        return SshFailed(f"VM '{name}' refused the SSH key: {tail}",
                         hint="the VM's admin user takes the key given at vm new (--ssh-key)")
    return SshFailed(f"ssh to VM '{name}' failed: {tail}", hint=f"imgtool vm ssh {name} shows it interactively")


def execute(home: Home, name: str, command: Command, *, tty: bool = False) -> int:
    """Run `command` in VM `name` with this process's stdin/stdout/stderr; its exit code."""
    argv = exec_argv(home, name, command, tty=tty)  # refuses a stopped or user-less VM first
    probe(home, name)
    return run.passthrough(argv)


# --- cp -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    vm: str | None  # None: a local path
    path: str


def parse_place(text: str, vms: set[str]) -> Place:
    head, sep, rest = text.partition(":")
    if sep and "/" not in head and head in vms:
        if not rest:
            raise InvalidArgument(f"'{text}' names no path in VM '{head}'", hint=f"e.g. {head}:/tmp/")
        return Place(head, rest)
    if sep and "/" not in head and head and not Path(text).exists():
        check_name(head, "VM")
        raise NotFound(f"VM '{head}' does not exist (in '{text}')",
                       hint="list VMs with imgtool vm list; write ./NAME:... for a local file with a colon")
    return Place(None, text)


def copy_argv(home: Home, sources: list[Place], target: Place, *, recursive: bool) -> list[str]:
    """scp's argv, after checking the places: one VM, on exactly one side; local sources exist."""
    vms = {p.vm for p in (*sources, target) if p.vm is not None}
    if len(vms) != 1:
        raise InvalidArgument("vm cp copies between this machine and one VM" if not vms else
                              "vm cp copies between this machine and one VM, not between VMs",
                              hint="write NAME:PATH on one side, e.g. imgtool vm cp ./f web:/tmp/")
    in_vm = {s.vm is not None for s in sources}
    if in_vm != {target.vm is None}:  # every source on one side, the destination on the other
        raise InvalidArgument("one side of vm cp is the VM (NAME:PATH), the other this machine",
                              hint="e.g. imgtool vm cp web:/etc/hostname . or imgtool vm cp ./f web:/tmp/")
    for source in sources:
        if source.vm is None and not Path(source.path).exists():
            raise NotFound(f"{source.path} does not exist", hint="check the path")
        if source.vm is None and Path(source.path).is_dir() and not recursive:
            raise InvalidArgument(f"{source.path} is a folder", hint="copy folders with vm cp -r")
    name = vms.pop()
    options = ssh.options(home, name, batch=True)
    options = ["-P" if o == "-p" else o for o in options]  # scp's port flag; no option value is "-p"
    login = f"{ssh.user(home, name)}@127.0.0.1"

    def word(place: Place) -> str:
        return f"{login}:{place.path}" if place.vm is not None else place.path

    return ["scp", "-p", *(["-r"] if recursive else []), *options, "--", *map(word, sources), word(target)]


def copy(home: Home, sources: list[Place], target: Place, *, recursive: bool) -> None:
    argv = copy_argv(home, sources, target, recursive=recursive)
    name = next(p.vm for p in (*sources, target) if p.vm is not None)
    assert name is not None
    probe(home, name)
    result = run.run(argv, timeout=None, check=False)
    if result.returncode != 0:
        raise copy_failure(name, result.stderr)


def copy_failure(name: str, stderr: str) -> ImgtoolError:
    tail = _tail(stderr)
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return StorageFull(f"copy failed: a disk is full ({tail})",
                           hint=f"free space in the guest, or make the VM with a larger --disk-size "
                                f"(imgtool vm show {name} gives its disk size)")
    if "No such file or directory" in stderr:
        return NotFound(f"copy failed: {tail}", hint="check the paths (guest paths are the VM's own)")
    if "Permission denied" in stderr:
        return ToolFailed(f"copy failed: {tail}", hint="the VM's admin user may not write there; copy to /tmp "
                                                        "and move it with imgtool vm exec NAME -- sudo mv ...")
    return ToolFailed(f"copy with VM '{name}' failed: {tail}", hint="run with --debug to see the scp command")
