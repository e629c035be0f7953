"""Entry points for the CLI and for publish: audit a named source; the publish-time gate."""

from __future__ import annotations

from imgtool.errors import Refused
from imgtool.guest import audit as audits
from imgtool.guest import blank, fs, targets
from imgtool.home import Home


def audit(home: Home, source: str, *, firmware: str | None = None) -> audits.Report:
    """Audit a source (see imgtool.guest.targets); `firmware` overrides the one its record names.

    A disk showing no partition table and no file system is "empty" when every byte of it is zero
    (provably no guest OS), else "not audited" like any other disk the audit cannot read."""
    with targets.resolve(home, source) as target, fs.disk_bytes(target.path, target.fmt) as disk:
        report = audits.audit_disk(disk, firmware=firmware or target.firmware)
        if report.opaque and blank.disk_is_blank(target.path, target.fmt, disk):
            return audits.empty_report()
        return report


def gate(report: audits.Report, *, source: str, allow_identity: bool, allow_unaudited: bool = False) -> None:
    """Publishing into a generalized definition: refuse identity, and any disk the audit cannot read,
    unless explicitly allowed (the caller records which).

    Only ext file systems can be read without libguestfs; any other disk (another file system, LVM,
    LUKS, a partition table without an ext root, or data without any layout) is refused, since
    "not audited" is never a pass. Only a disk whose every byte is zero passes unread (`empty`).
    """
    if not report.audited:
        if allow_unaudited:
            return
        raise Refused(f"{source} could not be audited for machine identity: {report.reason}",
                      hint=_unaudited_hint(report))
    found = report.identity()
    if not found or allow_identity:
        return
    what = ", ".join(f.check.replace("_", " ") for f in found)
    raise Refused(f"{source} is not generalized: the audit found {what}; every VM made from it would share them",
                  hint=f"{generalize_hint(source)} (then publish again), or --allow-identity to publish anyway "
                       "(recorded on the version)")


def _unaudited_hint(report: audits.Report) -> str:
    ways = ("publish again with --allow-unaudited (recorded on the version), or publish it into a specialized "
            "definition")
    if report.opaque:  # no layout at all: raw data, or an OS in a layout the audit does not know
        return f"if it holds no guest OS with machine identity, {ways}"
    return f"generalize it yourself (e.g. virt-sysprep) and {ways}"


def generalize_hint(source: str) -> str:
    """The command that generalizes `source`: a VM's disk in place, a file by an offline edit; a stored
    disk is immutable, so the way to a VM that can be generalized."""
    kind, _, rest = source.partition(":")
    if kind == "vm" and rest:
        return f"imgtool vm generalize {rest.partition(':')[0]}"
    if kind == "snapshot" and rest:
        vm, _, snap = rest.partition(":")[0].partition("/")
        return f"imgtool vm snapshot restore {vm} {snap}, then imgtool vm generalize {vm} and use --os-disk vm:{vm}"
    if "@" in source:
        return ("make a VM of it (imgtool vm new NAME --image ...), then imgtool vm generalize NAME and use "
                "--os-disk vm:NAME")
    if kind == "blake3":
        return "generalize the file it was captured from (imgtool generalize FILE) and publish that"
    return f"imgtool generalize {source}"
