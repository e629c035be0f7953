"""Generalize a VM the Azure way: remove what makes it *this* machine, then mark it generalized.

Removed (what `waagent -deprovision` and cloud-init's `clean --logs --machine-id --seed` remove, and
virt-sysprep's defaults for the same things): SSH host keys, /etc/machine-id (emptied: systemd makes a
new one on the next boot), cloud-init's instance state and seed, logs, shell histories, DHCP leases;
with `remove_admin` the provisioned admin user (account, group, home, sudoers rule).

Online (the VM runs and answers SSH): a script run with sudo in the guest, which then powers off; then
the offline removals run on its disk, for what the guest wrote while powering off (the journal).
Offline (the VM is stopped): the same removals on its OS overlay through qemu-storage-daemon's FUSE
export and `debugfs -w`. Either way every removal is listed, and the VM's record says `generalized`;
`vm start` refuses a generalized VM without --force (booting would personalize it again).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgtool import formats
from imgtool.errors import ImgtoolError, InvalidArgument, Refused, ToolFailed
from imgtool.guest import fs, ssh
from imgtool.guest.audit import HISTORIES, LEASE_DIRS, home_dirs
from imgtool.guest.fs import Debugfs
from imgtool.guest.targets import vm_target
from imgtool.home import Home
from imgtool.vm import runtime as vmrun
from imgtool.vm.record import load, save, vm_dir

CLOUD_INIT_SUDOERS = "/etc/sudoers.d/90-cloud-init-users"
ACCOUNT_FILES = ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow")
POWEROFF_TIMEOUT = 120.0
MAX_TREE = 20000  # entries removed from one tree at most (a hostile disk cannot keep us busy)


@dataclass(frozen=True)
class Result:
    name: str
    mode: str  # "online" or "offline"
    removed: tuple[str, ...]
    skipped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, "removed": list(self.removed), "skipped": list(self.skipped),
                "generalized": True}


def generalize(home: Home, name: str, *, remove_admin: bool = False, timeout: float = POWEROFF_TIMEOUT) -> Result:
    """Online when the VM runs, else offline. Refuses a VM already generalized (nothing to do)."""
    record = load(home, name)
    admin = record.seed.admin_user if remove_admin and record.seed else None
    if remove_admin and not admin:
        raise Refused(f"VM '{name}' has no provisioned admin user to remove (specialized image)",
                      hint="generalize without --remove-admin")
    running = vmrun.is_running(home, name)
    result = _online(home, name, admin, timeout) if running else offline(home, name, admin)
    _mark(home, result)
    return result


def _mark(home: Home, result: Result) -> None:
    # Reloaded: the online path stopped the VM meanwhile (and the runtime may have touched its files).
    save(home, dataclasses.replace(load(home, result.name), generalized=True))
    # The guest's host keys are gone and its next boot makes new ones: the pinned old key would make
    # `vm ssh`/`vm wait` refuse the VM (after `vm start --force`) as if it were an impostor.
    (vm_dir(home, result.name) / ssh.KNOWN_HOSTS).unlink(missing_ok=True)


# -- online ---------------------------------------------------------------

_SCRIPT = r"""
set -u
gone() { for p in "$@"; do if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$p" && echo "removed $p"; fi; done; }
gone /etc/ssh/ssh_host_*
if [ -s /etc/machine-id ]; then : > /etc/machine-id && echo "removed /etc/machine-id (emptied)"; fi
[ -L /var/lib/dbus/machine-id ] || gone /var/lib/dbus/machine-id
gone /var/lib/cloud/* /var/lib/cloud/.[!.]*
for h in /root /home/*; do for f in HISTORIES; do gone "$h/$f"; done; done
for d in LEASE_DIRS; do for f in "$d"/*lease*; do [ -f "$f" ] && gone "$f"; done; done
find /var/log -type f 2>/dev/null | while read -r f; do rm -f -- "$f" && echo "removed $f"; done
ADMIN_REMOVAL
sync
echo "deprovisioned"
systemctl poweroff --no-block
"""


def online_script(admin: str | None) -> str:
    removal = ""
    if admin:
        # -f: the admin's own SSH session is still open; the account goes anyway.
        removal = (f"userdel -f -r {admin} 2>/dev/null && echo 'removed user {admin} (account, group, home)'\n"
                   f"gone {CLOUD_INIT_SUDOERS}")
    return (_SCRIPT.replace("HISTORIES", " ".join(HISTORIES)).replace("LEASE_DIRS", " ".join(LEASE_DIRS))
            .replace("ADMIN_REMOVAL", removal))


def _online(home: Home, name: str, admin: str | None, timeout: float) -> Result:
    result = ssh.run_in(home, name, ["sudo", "-n", "sh", "-s"], input=online_script(admin).encode(),
                        timeout=timeout, check=False)
    lines = result.stdout.splitlines()
    if "deprovisioned" not in lines:
        # ssh's own failure (255) or the script's: nothing was powered off, say what happened.
        raise ToolFailed(f"deprovisioning VM '{name}' over SSH failed (exit {result.returncode}): "
                         f"{(result.stderr.strip() or 'no output')[-300:]}",
                         hint=f"check that it answers: imgtool vm wait {name}; or stop it and generalize offline")
    removed = tuple(line[len("removed "):] for line in lines if line.startswith("removed "))
    _wait_stopped(home, name, timeout)
    return after_poweroff(home, name, removed)


def after_poweroff(home: Home, name: str, removed: tuple[str, ...]) -> Result:
    """The online result, completed offline once the VM is off: what the guest wrote while powering off
    (the journal's last lines, a log rotated at shutdown) is removed from the disk too. When the disk
    cannot be edited offline (tools missing, a file system not cleanly unmounted, not ext2/3/4), that
    is listed as skipped: the online removals stand."""
    try:
        late = offline(home, name, None)
    except ImgtoolError as exc:
        return Result(name, "online", removed, (f"files written during power-off: {exc.message}",))
    return Result(name, "online", (*removed, *(f"{path} (written during power-off)" for path in late.removed)),
                  late.skipped)


def _wait_stopped(home: Home, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while vmrun.is_running(home, name) and time.monotonic() < deadline:
        time.sleep(0.5)
    # Powered off by itself, or stopped now (ACPI, then hard): either way runtime files are cleared.
    vmrun.stop(home, name, timeout=30)


# -- offline --------------------------------------------------------------


def offline(home: Home, name: str, admin: str | None) -> Result:
    target = vm_target(home, name)
    plan = _offline_disk(target.path, target.fmt, admin)
    return Result(name, "offline", tuple(plan.removed), tuple(plan.skipped))


def generalize_file(text: str) -> Result:
    """Generalize a disk file in place, offline (what virt-sysprep does to a file): the same removals as
    `vm generalize` on a stopped VM. The file is untrusted: inspected as capture inspects it first."""
    path = Path(text)
    if not path.is_file():
        raise InvalidArgument(f"'{text}' is not a disk file",
                              hint="give an image file; a VM is generalized with imgtool vm generalize NAME")
    info = formats.inspect(path)  # backing files, external data, nested images... are refused here
    try:
        plan = _offline_disk(path, info.format, None)
    except fs.NotAudited as exc:
        raise Refused(f"{text} cannot be generalized here: {exc.reason}",
                      hint="generalize it with virt-sysprep -a FILE (libguestfs) and publish it with "
                           "--allow-unaudited (recorded on the version), or publish it into a specialized "
                           "definition") from None
    return Result(text, "offline", tuple(plan.removed), tuple(plan.skipped))


def _offline_disk(path: Path, fmt: str, admin: str | None) -> Plan:
    """The removals on a stopped disk (debugfs -w through a writable export); NotAudited without an ext root."""
    with fs.disk_bytes(path, fmt, writable=True) as disk:
        root = fs.find_root(disk)
        dbg = Debugfs(root, writable=True)
        fs.check_clean(dbg)
        plan = Plan()
        _plan_removals(dbg, plan, admin)
        if admin:
            _plan_account_edits(dbg, plan, admin)
        _execute(dbg, plan)
    return plan


@dataclass
class Plan:
    """debugfs requests in order, and what they remove (for the report)."""

    requests: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # host-side name -> content for `write` requests

    def rm(self, path: str, entry: fs.Entry) -> None:
        if not fs.safe(path):
            self.skipped.append(repr(path))
            return
        self.requests.append(f'{"rmdir" if entry.kind == "dir" else "rm"} "{path}"')


def _plan_removals(dbg: Debugfs, plan: Plan, admin: str | None) -> None:
    for entry in dbg.listdir("/etc/ssh") or []:
        if entry.name.startswith("ssh_host_"):
            _remove(dbg, plan, f"/etc/ssh/{entry.name}", entry)
    machine_id = dbg.entry("/etc/machine-id")
    if machine_id is not None and machine_id.size > 0:
        plan.requests.append('rm "/etc/machine-id"')
        plan.files["machine-id"] = b""
        plan.requests += ['write "{machine-id}" "/etc/machine-id"', 'sif "/etc/machine-id" mode 0100444',
                          'sif "/etc/machine-id" uid 0', 'sif "/etc/machine-id" gid 0']
        plan.removed.append("/etc/machine-id (emptied)")
    dbus = dbg.entry("/var/lib/dbus/machine-id")
    if dbus is not None and dbus.kind == "file":
        _remove(dbg, plan, "/var/lib/dbus/machine-id", dbus)
    for entry in dbg.listdir("/var/lib/cloud") or []:
        _remove(dbg, plan, f"/var/lib/cloud/{entry.name}", entry)
    for home in home_dirs(dbg):
        if admin and home == f"/home/{admin}":
            continue  # removed whole below
        for entry in dbg.listdir(home) or []:
            if entry.name in HISTORIES:
                _remove(dbg, plan, f"{home}/{entry.name}", entry)
    for folder in LEASE_DIRS:
        for entry in dbg.listdir(folder) or []:
            if entry.kind == "file" and "lease" in entry.name:
                _remove(dbg, plan, f"{folder}/{entry.name}", entry)
    _remove_files_under(dbg, plan, "/var/log")
    if admin:
        admin_home = dbg.entry(f"/home/{admin}")
        if admin_home is not None:
            _remove(dbg, plan, f"/home/{admin}", admin_home)
        sudoers = dbg.entry(CLOUD_INIT_SUDOERS)
        if sudoers is not None:
            _remove(dbg, plan, CLOUD_INIT_SUDOERS, sudoers)


def _remove(dbg: Debugfs, plan: Plan, path: str, entry: fs.Entry) -> None:
    """Remove a file, symlink or whole directory tree (children first: debugfs' rmdir wants it empty)."""
    if entry.kind == "dir":
        stack = [path]
        order: list[tuple[str, fs.Entry]] = []
        while stack and len(order) < MAX_TREE:
            folder = stack.pop()
            for child in dbg.listdir(folder) or []:
                child_path = f"{folder}/{child.name}"
                order.append((child_path, child))
                if child.kind == "dir":
                    stack.append(child_path)
        # Deepest paths first, so every directory is empty when its rmdir comes.
        for child_path, child in sorted(order, key=lambda item: item[0].count("/"), reverse=True):
            plan.rm(child_path, child)
    plan.rm(path, entry)
    plan.removed.append(path + ("/" if entry.kind == "dir" else ""))


def _remove_files_under(dbg: Debugfs, plan: Plan, top: str) -> None:
    pending = [top]
    while pending and len(plan.requests) < MAX_TREE:
        folder = pending.pop()
        for entry in dbg.listdir(folder) or []:
            path = f"{folder}/{entry.name}"
            if entry.kind == "dir":
                pending.append(path)
            else:
                plan.rm(path, entry)
                plan.removed.append(path)


def _plan_account_edits(dbg: Debugfs, plan: Plan, admin: str) -> None:
    """Drop the admin's lines from the account files (and from group member lists)."""
    edited_any = False
    for path in ACCOUNT_FILES:
        entry = dbg.entry(path)
        data = dbg.read(path)
        if entry is None or data is None:
            continue
        edited = drop_account(data.decode("utf-8", "replace"), admin, groups=path in ("/etc/group", "/etc/gshadow"))
        if edited == data.decode("utf-8", "replace"):
            continue
        key = path.rsplit("/", 1)[1]
        plan.files[key] = edited.encode()
        plan.requests += [f'rm "{path}"', f'write "{{{key}}}" "{path}"', f'sif "{path}" mode 0{entry.mode:o}',
                          f'sif "{path}" uid {entry.uid}', f'sif "{path}" gid {entry.gid}']
        edited_any = True
    if edited_any:
        plan.removed.append(f"user {admin} (account, group, home)")


def drop_account(text: str, user: str, *, groups: bool) -> str:
    """passwd/shadow: drop the user's line. group/gshadow: drop the user's own group and remove the
    user from every member list."""
    kept = []
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] == user:
            continue
        if groups and len(fields) >= 4:
            fields[-1] = ",".join(m for m in fields[-1].split(",") if m and m != user)
        kept.append(":".join(fields))
    return "".join(f"{line}\n" for line in kept)


def _execute(dbg: Debugfs, plan: Plan) -> None:
    if not plan.requests:
        return
    with tempfile.TemporaryDirectory(prefix="imgtool-generalize-") as tmp:
        names = {}
        for key, content in plan.files.items():
            host = Path(tmp) / key
            host.write_bytes(content)
            host.chmod(0o600)
            names[key] = str(host)
        requests = []
        for request in plan.requests:
            key = _write_key(request)
            requests.append(request.replace("{" + key + "}", names[key]) if key else request)
        errors = dbg.batch(requests)
    failures = [line for line in errors.splitlines() if line.strip() and not line.startswith("debugfs ")]
    if failures:
        raise ToolFailed(f"debugfs could not apply every removal: {failures[0]}",
                         hint="check the disk with imgtool audit vm:NAME")


def _write_key(request: str) -> str:
    if not request.startswith("write "):
        return ""
    return request.split('"')[1].strip("{}")
