"""Image versions: publish, update, delete, export (reading and `latest` are in gallery/lookup.py).

Publishing writes in the store's order: chunks (capture) -> disk manifests ->
version record -> name. The name is created with create-only semantics, so of
two processes publishing the same version exactly one wins.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgtool import formats
from imgtool.capture import sources
from imgtool.errors import AlreadyExists, InvalidArgument, NotFound, Refused
from imgtool.gallery import recycle
from imgtool.gallery.galleries import VERSIONS, gallery_lock, get_definition_with_digest
from imgtool.gallery.lifecycle_model import CheckResult
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import OS_STATES, Definition, Disk, ImageVersion, check_choice, check_date
from imgtool.gallery.versions import Version
from imgtool.guest import service as guest
from imgtool.home import Home
from imgtool.names import DefinitionRef, parse_image_ref
from imgtool.tools import qemu_img
from imgtool.vm import record as vmrecord
from store import atomic
from store.materialize import materialize
from store.progress import Progress

MAX_LUN = 63


@dataclass(frozen=True)
class PublishRequest:
    ref: DefinitionRef
    version: Version
    os_disk: str
    data_disks: tuple[tuple[int, str], ...] = ()
    os_state: str | None = None
    exclude_from_latest: bool = False
    end_of_life: str | None = None
    block_deletion_before_end_of_life: bool = False
    source_format: str | None = None
    allow_identity: bool = False  # publish into a generalized definition even if the audit finds identity


def parse_data_disk(text: str) -> tuple[int, str]:
    """LUN=SOURCE -> (lun, source)."""
    lun_text, sep, source = text.partition("=")
    if not sep or not re.fullmatch(r"[0-9]{1,2}", lun_text) or not source or int(lun_text) > MAX_LUN:
        raise InvalidArgument(f"--data-disk '{text}' is not LUN=SOURCE",
                              hint=f"LUN is 0..{MAX_LUN}, e.g. --data-disk 0=data.qcow2")
    return int(lun_text), source


def _check_request(req: PublishRequest, definition: Definition) -> None:
    luns = [lun for lun, _ in req.data_disks]
    clashes = sorted({lun for lun in luns if luns.count(lun) > 1})
    if clashes:
        raise InvalidArgument(f"LUN {', '.join(map(str, clashes))} is given more than once",
                              hint="each data disk needs its own LUN")
    if req.os_state is not None:
        check_choice(req.os_state, OS_STATES, "OS state")
        if req.os_state != definition.os_state:
            raise Refused(f"the source has OS state {req.os_state}, but definition {req.ref} is "
                          f"{definition.os_state}", hint="publish it into a definition with the same OS state")
    check_date(req.end_of_life, "end of life")


def _source_needs_state(text: str) -> bool:
    return text.startswith(("vm:", "snapshot:"))


def publish(home: Home, req: PublishRequest, *, progress: Progress | None = None) -> ImageVersion:
    """Capture the sources and name the new version. Refuses an existing version."""
    definition, def_digest = get_definition_with_digest(home, req.ref)
    _check_request(req, definition)
    if req.os_state is None and _source_needs_state(req.os_disk):
        raise InvalidArgument("capturing a VM needs --os-state generalized|specialized",
                              hint="declare the state the VM's disk is in; it must match the definition")
    version_name = str(req.version)
    if home.store.get_name(VERSIONS, req.ref.gallery, req.ref.definition, version_name):
        raise AlreadyExists(f"version {req.ref}@{version_name} already exists",
                            hint="versions are immutable: publish a higher version")
    _inspect_files(req)
    audit = _audit(home, req, definition)
    with home.store.writing():
        disks = _capture_disks(home, req, definition, progress)
        record = ImageVersion(
            gallery=req.ref.gallery, definition=req.ref.definition, version=version_name,
            os_state=definition.os_state, disks=tuple(disks), definition_record=def_digest,
            exclude_from_latest=req.exclude_from_latest, end_of_life=check_date(req.end_of_life, "end of life"),
            block_deletion_before_end_of_life=req.block_deletion_before_end_of_life,
            provenance={"os_disk": disks[0].source},
            check=CheckResult("pending") if definition.boot_check else None, audit=audit)
        digest = home.store.put_manifest(record.to_json())
        with gallery_lock(home, req.ref.gallery):
            get_definition_with_digest(home, req.ref)  # still there?
            try:
                home.store.set_name(VERSIONS, req.ref.gallery, req.ref.definition, version_name,
                                    target=digest, create_only=True)
            except FileExistsError:
                raise AlreadyExists(f"version {req.ref}@{version_name} already exists",
                                    hint="another publish won the race; publish a higher version") from None
    return record


def _audit(home: Home, req: PublishRequest, definition: Definition) -> dict[str, Any] | None:
    """A generalized definition gets only sources without machine identity (imgtool.guest).

    The OS disk is audited before anything is captured; identity refuses the publish unless
    `allow_identity`, which the record keeps. Specialized definitions keep identity by design.
    """
    if definition.os_state != "generalized":
        return None
    report = guest.audit(home, req.os_disk, firmware=definition.firmware)
    guest.gate(report, source=req.os_disk, allow_identity=req.allow_identity)
    return {**report.to_json(), "source": req.os_disk, "allowed_identity": req.allow_identity and not report.clean}


def _inspect_files(req: PublishRequest) -> None:
    """Inspect every disk file before any is captured: a hostile data disk must not leave the
    OS disk (captured first) in the store. A publish stores all of its disks or nothing."""
    given = [(req.os_disk, req.source_format), *((text, None) for _lun, text in req.data_disks)]
    for text, fmt in given:
        if sources.is_file_source(text):
            formats.inspect(Path(text), expected=fmt)


def _capture_disks(home: Home, req: PublishRequest, definition: Definition,
                   progress: Progress | None) -> list[Disk]:
    os_captured = sources.capture(home, req.os_disk, fmt=req.source_format, progress=progress)
    _check_format(os_captured.source, definition)
    disks = [Disk(None, os_captured.digest, os_captured.virtual_size, os_captured.source)]
    data = list(req.data_disks)
    if not data and os_captured.source.get("kind") == "version":
        # A version copied from another gallery brings its data disks along (chunks are shared).
        source, _ = get_version(home, str(os_captured.source["name"]))
        disks.extend(source.data_disks)
        return disks
    for lun, text in sorted(data):
        captured = sources.capture(home, text, progress=progress)
        _check_format(captured.source, definition)
        disks.append(Disk(lun, captured.digest, captured.virtual_size, captured.source))
    return disks


def _check_format(source: dict[str, Any], definition: Definition) -> None:
    fmt = source.get("format")
    if fmt in definition.disallowed_disk_formats:
        raise Refused(f"definition {definition.gallery}/{definition.name} disallows {fmt} disks",
                      hint="convert the disk to an allowed format first")


# -- changing ----------------------------------------------------------------


def update_version(home: Home, text: str, **changes: Any) -> ImageVersion:
    ref = parse_image_ref(text, require_version=True)
    if "end_of_life" in changes:
        changes["end_of_life"] = check_date(changes["end_of_life"], "end of life")
    with gallery_lock(home, ref.gallery):
        current, _ = get_version(home, ref)
        updated = current.updated_with(**changes)
        digest = home.store.put_manifest(updated.to_json())
        home.store.set_name(VERSIONS, ref.gallery, ref.definition, current.version, target=digest)
    return updated


def delete_version(home: Home, text: str, *, purge: bool = False, now: dt.datetime | None = None,
                   retention: dt.timedelta = recycle.DEFAULT_RETENTION) -> recycle.DeletedItem | None:
    """Delete a version: kept as deleted for `retention` (restorable), or for good with `purge`.

    Refused while VMs stand on it or before a blocking end of life. Returns what is kept (None: purged)."""
    ref = parse_image_ref(text, require_version=True)
    with gallery_lock(home, ref.gallery):
        current, _ = get_version(home, ref)
        users = vmrecord.vms_using(home, current.gallery, current.definition, current.version)
        if users:
            raise Refused(f"version {text} is used by VMs: {', '.join(users)}",
                          hint="delete those VMs first (imgtool vm delete)")
        if current.block_deletion_before_end_of_life and (
                current.end_of_life is None or current.end_of_life[:10] > dt.date.today().isoformat()):
            raise Refused(f"version {text} blocks deletion before its end of life ({current.end_of_life})",
                          hint="wait for the end of life, or clear the block with imgtool version update")
        key = (VERSIONS, ref.gallery, ref.definition, current.version)
        if purge:
            home.store.delete_name(*key)
            return None
        return recycle.hide(home, key, now=now, retention=retention)


def export(home: Home, text: str, out: Path, *, fmt: str = "qcow2", lun: int | None = None,
           progress: Progress | None = None) -> Disk:
    """Write one disk of a version to `out` (qcow2 or raw), atomically."""
    if fmt not in ("qcow2", "raw"):
        raise InvalidArgument(f"export format '{fmt}' is not supported", hint="use qcow2 or raw")
    version, _ = get_version(home, text)
    disk = _disk(version, lun)
    out = Path(out).absolute()
    tmp_raw = atomic.tmp_name(out.parent)
    try:
        materialize(home.store, home.store.get_disk(disk.digest), tmp_raw, progress=progress, durable=False)
        if fmt == "raw":
            os.replace(tmp_raw, out)
        else:
            tmp_out = atomic.tmp_name(out.parent)
            try:
                qemu_img.convert(tmp_raw, tmp_out, src_fmt="raw", dst_fmt="qcow2")
                os.replace(tmp_out, out)
            finally:
                tmp_out.unlink(missing_ok=True)
    finally:
        tmp_raw.unlink(missing_ok=True)
    return disk


def _disk(version: ImageVersion, lun: int | None) -> Disk:
    for disk in version.disks:
        if disk.lun == lun:
            return disk
    what = "an OS disk" if lun is None else f"a data disk at LUN {lun}"
    luns = [str(d.lun) for d in version.data_disks]
    raise NotFound(f"version {version.gallery}/{version.definition}@{version.version} has no {what}",
                   hint=f"its data disk LUNs: {', '.join(luns) or 'none'}")
