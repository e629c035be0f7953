"""Entry points for the CLI and for publish: audit a named source; the publish-time gate."""

from __future__ import annotations

from imgtool.errors import Refused
from imgtool.guest import audit as audits
from imgtool.guest import fs, targets
from imgtool.home import Home


def audit(home: Home, source: str, *, firmware: str | None = None) -> audits.Report:
    """Audit a source (see imgtool.guest.targets); `firmware` overrides the one its record names."""
    with targets.resolve(home, source) as target, fs.disk_bytes(target.path, target.fmt) as disk:
        return audits.audit_disk(disk, firmware=firmware or target.firmware)


def gate(report: audits.Report, *, source: str, allow_identity: bool) -> None:
    """Publishing into a generalized definition: refuse identity unless explicitly allowed.

    A source that could not be audited is not refused (the record says "not audited" and why),
    since only ext file systems can be read without libguestfs; it is never called clean.
    """
    found = report.identity()
    if not found or allow_identity:
        return
    what = ", ".join(f.check.replace("_", " ") for f in found)
    vm = source[3:].partition(":")[0] if source.startswith("vm:") else "NAME"
    raise Refused(f"{source} is not generalized: the audit found {what}; every VM made from it would share them",
                  hint=f"imgtool vm generalize {vm} (then publish again), or --allow-identity to publish anyway "
                       "(recorded on the version)")
