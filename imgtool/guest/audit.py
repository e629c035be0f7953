"""The audit: identity a generalized image must not carry, and facts about the guest, read-only.

Findings are `identity` (a clone would share it: a non-empty /etc/machine-id, SSH host keys,
cloud-init instance state; publishing into a generalized definition refuses them) or `warning`
(personal data a clone would inherit: authorized_keys, shell histories, DHCP leases, logs).
A file system the audit cannot read gives `audited: false` with the reason, never a pass. A disk
whose every byte is zero holds no guest OS: `audited: true, empty: true` (imgtool.guest.blank).

JSON shape (`imgtool audit --json`, and the `audit` field of a version record):
    {"audited": bool, "reason": str|null, "clean": bool, "empty": bool, "findings": [{"check", "severity",
     "paths", "count", "detail"}], "facts": {"os", "kernels", "partition_table", "root_partition", "boot_modes",
     "firmware", "boot_mode_ok", "fs_size", "fs_free"}, "audited_at": str}
`clean` is true only when audited and no identity finding was made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgtool.clock import stamp
from imgtool.guest import fs
from imgtool.guest.fs import Debugfs

IDENTITY = "identity"
WARNING = "warning"
HOME_DIRS = ("/root",)
HISTORIES = (".bash_history", ".zsh_history", ".sh_history", ".python_history")
LEASE_DIRS = ("/var/lib/dhcp", "/var/lib/dhclient", "/var/lib/NetworkManager", "/var/lib/dhcpcd")
MAX_LISTED = 8  # paths shown per finding


@dataclass(frozen=True)
class Finding:
    check: str
    severity: str
    paths: tuple[str, ...]
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "severity": self.severity, "paths": list(self.paths[:MAX_LISTED]),
                "count": len(self.paths), "detail": self.detail}


@dataclass(frozen=True)
class Report:
    audited: bool
    reason: str | None = None
    findings: tuple[Finding, ...] = ()
    facts: dict[str, Any] = field(default_factory=dict)
    audited_at: str = field(default_factory=stamp)
    opaque: bool = False  # not audited, and no OS was seen at all (imgtool.guest.fs.NotAudited)
    empty: bool = False  # audited: every byte is zero, so there is no guest OS (imgtool.guest.blank)

    @property
    def clean(self) -> bool:
        return self.audited and not any(f.severity == IDENTITY for f in self.findings)

    def identity(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == IDENTITY]

    def to_json(self) -> dict[str, Any]:
        return {"audited": self.audited, "reason": self.reason, "clean": self.clean, "empty": self.empty,
                "findings": [f.to_json() for f in self.findings], "facts": self.facts,
                "audited_at": self.audited_at}


def audit_disk(disk: Any, *, firmware: str | None = None) -> Report:
    """Audit the guest-visible bytes at `disk` (a raw view). `firmware`: the definition's, if known."""
    try:
        root = fs.find_root(disk)
        dbg = Debugfs(root)
        findings = tuple(_findings(dbg))
        facts = _facts(dbg, root, firmware)
    except fs.NotAudited as exc:
        return Report(False, exc.reason, opaque=exc.opaque)
    return Report(True, None, findings, facts)


def empty_report() -> Report:
    """The report of a disk that reads as zeros throughout: audited, nothing found, no OS."""
    return Report(True, None, (), {"os": None}, empty=True)


def _findings(dbg: Debugfs) -> list[Finding]:
    checks = [_machine_id(dbg), _host_keys(dbg), _cloud_init(dbg), *_user_files(dbg), _leases(dbg), _logs(dbg)]
    return [f for f in checks if f is not None]


def _machine_id(dbg: Debugfs) -> Finding | None:
    data = dbg.read("/etc/machine-id")
    value = (data or b"").strip()
    if not value or value == b"uninitialized":
        return None
    return Finding("machine_id", IDENTITY, ("/etc/machine-id",),
                   "a machine-id is set: every clone would share it (systemd makes a new one when it is empty)")


def _host_keys(dbg: Debugfs) -> Finding | None:
    keys = [f"/etc/ssh/{e.name}" for e in dbg.listdir("/etc/ssh") or [] if e.name.startswith("ssh_host_")]
    if not keys:
        return None
    return Finding("ssh_host_keys", IDENTITY, tuple(keys),
                   "SSH host keys: every clone would present the same host identity")


def _cloud_init(dbg: Debugfs) -> Finding | None:
    paths = []
    top = {e.name: e for e in dbg.listdir("/var/lib/cloud") or []}
    if "instance" in top:
        paths.append("/var/lib/cloud/instance")
    paths += [f"/var/lib/cloud/instances/{e.name}" for e in dbg.listdir("/var/lib/cloud/instances") or []]
    if dbg.entry("/var/lib/cloud/data/instance-id") is not None:
        paths.append("/var/lib/cloud/data/instance-id")
    if not paths:
        return None
    return Finding("cloud_init_state", IDENTITY, tuple(paths),
                   "cloud-init instance state: a clone would not be provisioned as a new instance")


def home_dirs(dbg: Debugfs) -> list[str]:
    return [*HOME_DIRS, *(f"/home/{e.name}" for e in dbg.listdir("/home") or [] if e.kind == "dir")]


def _user_files(dbg: Debugfs) -> list[Finding | None]:
    keys, histories = [], []
    for home in home_dirs(dbg):
        for entry in dbg.listdir(home) or []:
            if entry.name in HISTORIES and entry.size > 0:
                histories.append(f"{home}/{entry.name}")
        for entry in dbg.listdir(f"{home}/.ssh") or []:
            if entry.name in ("authorized_keys", "authorized_keys2") and entry.size > 0:
                keys.append(f"{home}/.ssh/{entry.name}")
    return [
        Finding("authorized_keys", WARNING, tuple(keys),
                "provisioned users' SSH keys: their holders could log in to every clone") if keys else None,
        Finding("shell_history", WARNING, tuple(histories), "shell histories") if histories else None,
    ]


def _leases(dbg: Debugfs) -> Finding | None:
    found = []
    for folder in LEASE_DIRS:
        found += [f"{folder}/{e.name}" for e in dbg.listdir(folder) or []
                  if e.kind == "file" and e.size > 0 and "lease" in e.name]
    return Finding("dhcp_leases", WARNING, tuple(found), "DHCP leases") if found else None


def _logs(dbg: Debugfs) -> Finding | None:
    found: list[str] = []
    total = 0
    pending = ["/var/log"]
    while pending and len(pending) < 256:  # bounded: a hostile tree cannot keep the audit busy
        folder = pending.pop()
        for entry in dbg.listdir(folder) or []:
            path = f"{folder}/{entry.name}"
            if entry.kind == "dir":
                pending.append(path)
            elif entry.kind == "file" and entry.size > 0:
                found.append(path)
                total += entry.size
    if not found:
        return None
    return Finding("logs", WARNING, tuple(sorted(found)), f"{len(found)} log files, {total} bytes")


def _facts(dbg: Debugfs, root: fs.RootFs, firmware: str | None) -> dict[str, Any]:
    stats = dbg.stats()
    block = int(stats.get("Block size", "0") or 0)
    modes = list(root.table.boot_modes())
    return {
        "os": _os_release(dbg),
        "kernels": sorted(e.name for e in dbg.listdir("/boot") or [] if e.name.startswith("vmlinuz-")),
        "partition_table": root.table.scheme,
        "root_partition": None if root.partition is None else root.partition.number,
        "boot_modes": modes,
        "firmware": firmware,
        "boot_mode_ok": None if firmware is None else firmware in modes,
        "fs_size": block * int(stats.get("Block count", "0") or 0),
        "fs_free": block * int(stats.get("Free blocks", "0") or 0),
    }


def _os_release(dbg: Debugfs) -> str | None:
    data = dbg.read("/etc/os-release") or dbg.read("/usr/lib/os-release")
    if data is None:
        return None
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("=")
        if key == "PRETTY_NAME":
            return value.strip().strip('"')[:200]
    return None
