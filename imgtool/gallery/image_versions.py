"""Image versions: publish and export (reading and `latest` are in gallery/lookup.py; update and
delete in gallery/version_changes.py).

Publishing writes in the store's order: chunks (capture) -> disk manifests ->
version record -> name. The name is created with create-only semantics, so of
two processes publishing the same version exactly one wins.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imgtool import formats
from imgtool.capture import archives, sources
from imgtool.capture.disk import CAPTURES
from imgtool.errors import AlreadyExists, InvalidArgument, NotFound, Refused
from imgtool.gallery import export_formats
from imgtool.gallery.galleries import VERSIONS, gallery_lock, get_definition_with_digest
from imgtool.gallery.lifecycle_model import CheckResult
from imgtool.gallery.lookup import get_version, version_disks
from imgtool.gallery.model import OS_STATES, Definition, Disk, ImageVersion, check_choice, check_date
from imgtool.gallery.version_changes import check_block_deletion
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from imgtool.tools import qemu_img
from imgtool.vocab import SourceKind
from store import atomic
from store import digest as digests
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
    replace_data_disks: bool = False
    allow_nested: bool = False  # store disks whose content is itself an image header (recorded per disk)
    allow_identity: bool = False  # publish into a generalized definition even if the audit finds identity
    allow_unaudited: bool = False  # ... or even if the audit cannot read the guest OS it sees (recorded)


class AuditGate(Protocol):
    """What publishing into a generalized definition needs of the guest audit: audit the OS disk `source`
    before anything is captured, refuse machine identity (unless `allow_identity`) and a guest OS the audit
    cannot read (unless `allow_unaudited`), and return what the version records as its `audit`.

    The guest layer sits above the gallery, so the gate is passed in: imgtool.flows.publishing.audit_gate."""

    def __call__(self, home: Home, source: str, *, firmware: str, allow_identity: bool,
                 allow_unaudited: bool) -> dict[str, Any]: ...


@dataclass(frozen=True)
class PlannedDisk:
    """One disk of the version to be: its LUN (None: the OS disk) and the source to capture."""

    lun: int | None
    source: str


def parse_data_disk(text: str) -> tuple[int, str]:
    """LUN=SOURCE -> (lun, source)."""
    lun_text, sep, source = text.partition("=")
    if not sep or not re.fullmatch(r"[0-9]{1,2}", lun_text) or not source or int(lun_text) > MAX_LUN:
        raise InvalidArgument(f"--data-disk '{text}' is not LUN=SOURCE",
                              hint=f"LUN is 0..{MAX_LUN}, e.g. --data-disk 0=data.qcow2")
    return int(lun_text), source


def plan_disks(home: Home, req: PublishRequest) -> list[PlannedDisk]:
    """The version's disks by the rules in DATA_DISK_RULES; checks every named VM, snapshot and
    version exists (and has the LUNs asked for) before anything is captured."""
    os_source = sources.parse(req.os_disk)
    versions = version_disks(home)
    planned: dict[int | None, PlannedDisk] = {None: PlannedDisk(None, req.os_disk)}
    if os_source.kind in sources.MULTI_DISK and not os_source.selected:
        for lun in sources.data_luns(home, os_source, versions=versions):
            planned[lun] = PlannedDisk(lun, os_source.select(lun).text())
    else:
        sources.data_luns(home, os_source, versions=versions)  # a named VM, snapshot or version must exist
    clashes = sorted(lun for lun, _ in req.data_disks if lun in planned)
    if clashes and not req.replace_data_disks:
        luns = ", ".join(map(str, clashes))
        raise InvalidArgument(
            f"--os-disk {req.os_disk} already brings a data disk at LUN {luns}; a --data-disk there would "
            "replace it", hint="pass --replace-data-disks to replace it, use another LUN, or take the OS disk "
                               f"alone with --os-disk {os_source.select(None).text()}")
    for lun, text in req.data_disks:
        given = sources.parse(text)
        if given.kind in sources.MULTI_DISK and not given.selected:
            given = given.select(lun)  # LUN=vm:web is web's data disk at LUN, never its OS disk
        available = sources.data_luns(home, given, versions=versions) if given.kind in sources.MULTI_DISK else []
        if given.kind in sources.MULTI_DISK and given.lun is not None and given.lun not in available:
            raise NotFound(f"--data-disk {lun}={text}: {given.target} has no data disk at LUN {given.lun}",
                           hint=f"its data disk LUNs: {_luns(available)}; select one with :LUN "
                                f"(e.g. {lun}={given.select(available[0] if available else None).text()})")
        planned[lun] = PlannedDisk(lun, given.text())
    return [planned[None], *(planned[lun] for lun in sorted(k for k in planned if k is not None))]


def _luns(luns: list[int]) -> str:
    return ", ".join(map(str, luns)) or "none"


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
    check_block_deletion(req.block_deletion_before_end_of_life, req.end_of_life)


def _source_needs_state(text: str) -> bool:
    return text.startswith(("vm:", "snapshot:"))


def publish(home: Home, req: PublishRequest, *, audit_gate: AuditGate,
            progress: Progress | None = None) -> ImageVersion:
    """Capture the sources and name the new version. Refuses an existing version; a generalized
    definition's OS disk passes `audit_gate` first."""
    definition, def_digest = get_definition_with_digest(home, req.ref)
    _check_request(req, definition)
    if req.os_state is None and _source_needs_state(req.os_disk):
        raise InvalidArgument("capturing a VM needs --os-state generalized|specialized",
                              hint="declare the state the VM's disk is in; it must match the definition")
    version_name = str(req.version)
    if home.store.get_name(VERSIONS, req.ref.gallery, req.ref.definition, version_name):
        raise AlreadyExists(f"version {req.ref}@{version_name} already exists",
                            hint="versions are immutable: publish a higher version")
    if req.source_format is not None and sources.parse(req.os_disk).kind != SourceKind.FILE:
        raise InvalidArgument(f"--format {req.source_format} applies to a disk file, and --os-disk {req.os_disk} "
                              "is not one", hint="drop --format: a stored disk's format is known")
    plan = plan_disks(home, req)
    _inspect_files(req)
    audit = None
    if definition.os_state == "generalized":  # specialized definitions keep identity by design
        audit = audit_gate(home, req.os_disk, firmware=definition.firmware, allow_identity=req.allow_identity,
                           allow_unaudited=req.allow_unaudited)
    with home.store.writing():
        disks = _capture_disks(home, req, plan, definition, progress)
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
            except AlreadyExists:
                raise AlreadyExists(f"version {req.ref}@{version_name} already exists",
                                    hint="another publish won the race; publish a higher version") from None
    return record


def _inspect_files(req: PublishRequest) -> None:
    """Inspect every disk file before any is captured: a hostile data disk must not leave the
    OS disk (captured first) in the store. A publish stores all of its disks or nothing."""
    given = [(req.os_disk, req.source_format), *((text, None) for _lun, text in req.data_disks)]
    for text, fmt in given:
        if sources.is_file_source(text):
            info = formats.inspect(Path(text), expected=fmt)
            if info.format == "raw":
                archives.refuse_archive(info.path)


def _capture_disks(home: Home, req: PublishRequest, plan: list[PlannedDisk], definition: Definition,
                   progress: Progress | None) -> list[Disk]:
    disks = []
    leased_before = {digest for _key, digest in home.store.list_names(CAPTURES)}
    try:
        for planned in plan:
            fmt = req.source_format if planned.lun is None else None
            captured = sources.capture(home, planned.source, versions=version_disks(home), fmt=fmt,
                                       progress=progress, allow_nested=req.allow_nested)
            disks.append(Disk(planned.lun, captured.digest, captured.virtual_size, captured.source))
            _check_format(captured.source, definition)
    except BaseException:
        # A publish stores all of its disks or nothing: the leases its earlier captures took go again
        # (their chunks are garbage for gc), so a refused disk leaves the names as they were.
        for disk in disks:
            if disk.digest not in leased_before:
                home.store.delete_name(CAPTURES, digests.parse(disk.digest))
        raise
    return disks


def _check_format(source: dict[str, Any], definition: Definition) -> None:
    fmt = source.get("format")
    if fmt in definition.disallowed_disk_formats:
        raise Refused(f"definition {definition.gallery}/{definition.name} disallows {fmt} disks",
                      hint="convert the disk to an allowed format first")


def _check_output(out: Path, force: bool) -> None:
    if out.is_dir():
        raise InvalidArgument(f"{out} is a folder", hint="give a file path, e.g. out.qcow2")
    if not out.parent.is_dir():
        raise NotFound(f"folder {out.parent} does not exist", hint=f"create it first: mkdir -p {out.parent}")
    if (out.exists() or out.is_symlink()) and not force:
        raise AlreadyExists(f"{out} already exists", hint="choose another path, or pass --force to overwrite it")


def export(home: Home, text: str, out: Path, *, fmt: str = "qcow2", lun: int | None = None,
           progress: Progress | None = None, force: bool = False) -> Disk:
    """Write one disk of a version to `out` (qcow2, raw, vhd or vmdk: gallery/export_formats.py),
    atomically; refuses to overwrite unless forced. The file's virtual size is the disk's, except a VHD's,
    rounded up to a whole MiB (the tail reads as zeros)."""
    target = export_formats.choose(out, fmt)
    version, _ = get_version(home, text)
    disk = _disk(version, lun)
    out = Path(out).absolute()
    _check_output(out, force)
    tmp_raw = atomic.tmp_name(out.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        materialize(home.store, home.store.get_disk(disk.digest), tmp_raw, progress=progress, durable=False)
        if target.size_of(disk.virtual_size) != disk.virtual_size:
            os.truncate(tmp_raw, target.size_of(disk.virtual_size))  # a sparse tail of zeros
        if target.name == "raw":
            os.chmod(tmp_raw, 0o666 & ~umask)
            os.replace(tmp_raw, out)
        else:
            tmp_out = atomic.tmp_name(out.parent)
            try:
                qemu_img.convert(tmp_raw, tmp_out, src_fmt="raw", dst_fmt=target.qemu_format, options=target.options)
                os.chmod(tmp_out, 0o666 & ~umask)
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
