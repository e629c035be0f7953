"""SSH into a VM with its seeded key, checking the host key against the VM's own known_hosts.

The host key is recorded on first contact (accept-new) in `<vm>/known_hosts` under an alias that
names the VM, not the port (the forwarded port changes with every start), and enforced afterwards:
a guest whose host key changes without a new VM is refused. BatchMode: never a password prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import InvalidArgument, Refused, ToolFailed
from imgtool.home import Home
from imgtool.tools import run
from imgtool.vm import state as vmstate
from imgtool.vm.record import load, vm_dir

KNOWN_HOSTS = "known_hosts"
CONNECT_TIMEOUT = 10
PROBE_TIMEOUT = 60.0
Progress = Callable[[str], None]


def options(home: Home, name: str, *, batch: bool = True, identity: Path | None = None) -> list[str]:
    """ssh options for VM `name` (port, key, known_hosts), without the destination. `identity`: a
    private key to use instead of the seeded one (a specialized VM has no seed)."""
    record = load(home, name)
    status = vmstate.running_state(home, name)
    if status is None:
        raise Refused(f"VM '{name}' is not running", hint=f"start it: imgtool vm start {name}")
    argv = ["-p", str(status.ssh_port),
            "-o", f"UserKnownHostsFile={vm_dir(home, name) / KNOWN_HOSTS}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"HostKeyAlias=imgtool-vm-{name}",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", "LogLevel=ERROR"]
    if batch:
        argv += ["-o", "BatchMode=yes"]
    key = (record.seed.ssh_key if record.seed else None) or ""
    if identity is not None:
        argv += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    elif key.endswith(".pub") and Path(key[:-4]).exists():
        argv += ["-i", key[:-4], "-o", "IdentitiesOnly=yes"]
    return argv


def user(home: Home, name: str) -> str:
    seed = load(home, name).seed
    admin = seed.admin_user if seed else None
    if not admin:
        raise InvalidArgument(f"VM '{name}' has no provisioned user (specialized image)",
                              hint="use the source image's own accounts: ssh -p PORT USER@127.0.0.1")
    return str(admin)


@dataclass(frozen=True)
class Login:
    """Who to log in as: the seeded admin by default; a specialized VM's own account otherwise."""

    user: str | None = None
    identity: Path | None = None


def argv(home: Home, name: str, command: list[str], *, batch: bool = True, login: Login = Login()) -> list[str]:
    return ["ssh", *options(home, name, batch=batch, identity=login.identity),
            f"{login.user or user(home, name)}@127.0.0.1", *command]


def run_in(home: Home, name: str, command: list[str], *, input: bytes | None = None,
           timeout: float = PROBE_TIMEOUT, check: bool = True, login: Login = Login()) -> run.Result:
    """Run a command in the guest over SSH (BatchMode); ToolFailed when ssh or the command fails."""
    return run.run(argv(home, name, command, login=login), input=input, timeout=timeout, check=check)


def wait(home: Home, name: str, *, timeout: float, cloud_init: bool = False,
         progress: Progress | None = None, login: Login = Login()) -> dict[str, float]:
    """Return once the guest accepts SSH with the seeded key (and, with `cloud_init`, once
    `cloud-init status` says done). Bounded by `timeout`; ToolFailed with what was last seen.

    Returns the seconds it took: {"ssh": s, "cloud_init": s}.
    """
    start = time.monotonic()
    deadline = start + timeout
    took: dict[str, float] = {}
    if not vmstate.is_running(home, name):
        raise Refused(f"VM '{name}' is not running", hint=f"start it: imgtool vm start {name}")
    if login.user is None:
        user(home, name)  # a VM without a provisioned user needs --user: say so now, not at the timeout
    _until(home, name, deadline, lambda t: _ssh_ready(home, name, t, login), "SSH", progress, start)
    took["ssh"] = time.monotonic() - start
    if cloud_init:
        _until(home, name, deadline, lambda t: _cloud_init_done(home, name, t, login), "cloud-init", progress,
               start)
        took["cloud_init"] = time.monotonic() - start
    return took


def _until(home: Home, name: str, deadline: float, probe: Callable[[float], str | None], what: str,
           progress: Progress | None, start: float) -> None:
    last = "no answer yet"
    while True:
        if not vmstate.is_running(home, name):
            raise ToolFailed(f"VM '{name}' stopped while waiting for {what}",
                             hint=f"read its console: imgtool vm console {name}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise ToolFailed(f"VM '{name}' did not get {what} ready within {deadline - start:.0f}s "
                             f"(last: {last})",
                             hint=f"read its console (imgtool vm console {name}), or wait longer with --timeout")
        if progress:
            progress(f"waiting for {what} ({time.monotonic() - start:.0f}s)")
        problem = probe(min(left, PROBE_TIMEOUT))
        if problem is None:
            return
        last = problem
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key verification failed")


def _ssh_ready(home: Home, name: str, timeout: float, login: Login) -> str | None:
    try:
        run_in(home, name, ["true"], timeout=timeout, login=login)
    except ToolFailed as exc:
        if any(words in exc.stderr_tail + exc.message for words in HOST_KEY_CHANGED):
            # Waiting cannot help: ssh refuses this host key every time until the pin is dropped.
            raise Refused(f"VM '{name}' answers SSH with a host key other than the one remembered for it",
                          hint=f"if its keys were made anew (generalized, restored, recreated), forget the old "
                               f"one: rm {vm_dir(home, name) / KNOWN_HOSTS}") from None
        return exc.message.splitlines()[0][:200]
    return None


def _cloud_init_done(home: Home, name: str, timeout: float, login: Login) -> str | None:
    try:
        result = run_in(home, name, ["cloud-init", "status"], timeout=timeout, check=False, login=login)
    except ToolFailed as exc:  # no answer in time (a busy TCG guest): ask again until the deadline
        return exc.message.splitlines()[0][:200]
    text = result.stdout.strip()
    if "status: done" in text:
        return None
    if "status: error" in text or "status: disabled" in text:
        raise ToolFailed(f"cloud-init in VM '{name}' finished with {text}",
                         hint=f"read its log: imgtool vm ssh {name} sudo cat /var/log/cloud-init.log")
    return text or result.stderr.strip()[:200] or "no status"
