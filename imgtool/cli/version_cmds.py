"""imgtool capture, imgtool publish, imgtool version …"""

from pathlib import Path
from typing import Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, fields, human_bytes, state, table
from imgtool.errors import InvalidArgument
from imgtool.gallery.model import ImageVersion
from imgtool.gallery.versions import Version
from imgtool.names import parse_definition_ref

version_app = typer.Typer(help="Image versions (GALLERY/DEFINITION@X.Y.Z): list, show, update, delete, resolve "
                          "latest, export.", no_args_is_help=True)
Opt = typer.Option
Arg = typer.Argument


def version_json(v: ImageVersion, digest: str) -> dict[str, Any]:
    body = v.to_json()
    for key in ("format", "kind", "links"):
        body.pop(key)
    return {"name": f"{v.gallery}/{v.definition}@{v.version}", "record": digest, **body}


def register(app: typer.Typer) -> None:
    app.command("capture")(capture)
    app.command("publish")(publish)


def capture(
    ctx: typer.Context,
    source: Annotated[str, Arg(help="A disk file (qcow2, raw, vmdk, vpc, vhdx), vm:NAME, snapshot:VM/SNAP, "
                                    "GALLERY/DEF@X.Y.Z or blake3:<digest>.")],
    fmt: Annotated[str | None, Opt("--format", help="Assert the file's format; a mismatch with what its "
                                                     "bytes say is an error.")] = None,
) -> None:
    """Inspect a source and ingest its disk into the store; print the disk's digest.

    Untrusted files are checked before any QEMU tool opens them (backing files, external data files,
    VMDK extents, absurd sizes are refused). Only allocated data is read; identical chunks are stored once.
    An unpublished capture is kept for 24 hours (see imgtool gc)."""
    from imgtool.capture import sources

    st = state(ctx)
    bar = ProgressBar(f"capturing {Path(source).name}", enabled=not st.json)
    try:
        captured = sources.capture(st.home, source, fmt=fmt, progress=bar)
    finally:
        bar.close()
    if st.json:
        emit_json(captured.to_json())
        return
    print(captured.digest)


def publish(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION to publish into.")],
    version: Annotated[str, Opt("--version", help="MAJOR.MINOR.PATCH (each 0..4294967295).")],
    os_disk: Annotated[str, Opt(help="The OS disk: a file, blake3:<digest>, GALLERY/DEF@X.Y.Z, vm:NAME or "
                                     "snapshot:VM/SNAP.")],
    data_disk: Annotated[list[str] | None, Opt(help="LUN=SOURCE (repeatable).")] = None,
    exclude_from_latest: Annotated[bool, Opt(help="Never pick this version as latest.")] = False,
    end_of_life: Annotated[str | None, Opt(help="YYYY-MM-DD (informational; updatable).")] = None,
    block_deletion_before_end_of_life: Annotated[bool, Opt(help="Refuse deletion before end of life.")] = False,
    os_state: Annotated[str | None, Opt(help="Declared OS state of the source (required for VM sources); must "
                                             "match the definition.")] = None,
    fmt: Annotated[str | None, Opt("--format", help="Assert the OS disk file's format.")] = None,
    allow_identity: Annotated[bool, Opt(help="Generalized definitions: publish even if the audit finds machine "
                                             "identity (host keys, machine-id, cloud-init state); recorded.")]
    = False,
) -> None:
    """Publish a new, immutable image version from its disks.

    Into a generalized definition the OS disk is audited first (see imgtool audit): SSH host keys, a
    machine-id or cloud-init instance state refuse the publish. The audit is stored on the version."""
    from imgtool.gallery import image_versions, lookup

    st = state(ctx)
    request = image_versions.PublishRequest(
        ref=parse_definition_ref(ref), version=Version.parse(version), os_disk=os_disk,
        data_disks=tuple(image_versions.parse_data_disk(d) for d in data_disk or []), os_state=os_state,
        exclude_from_latest=exclude_from_latest, end_of_life=end_of_life,
        block_deletion_before_end_of_life=block_deletion_before_end_of_life, source_format=fmt,
        allow_identity=allow_identity)
    bar = ProgressBar(f"publishing {ref}@{version}", enabled=not st.json)
    try:
        published = image_versions.publish(st.home, request, progress=bar)
    finally:
        bar.close()
    if st.json:
        emit_json(version_json(*lookup.get_version(st.home, f"{ref}@{published.version}")))
        return
    print(f"published {ref}@{published.version}")


@version_app.command("list")
def version_list(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION")]) -> None:
    """List the versions of a definition, lowest first; the one `latest` picks is marked."""
    from imgtool.gallery import lookup

    st = state(ctx)
    r = parse_definition_ref(ref)
    found = lookup.list_versions(st.home, r)
    latest = str(lookup.latest_of(found)[0])
    if st.json:
        emit_json([{"name": f"{r}@{v.version}", **v.to_json(), "latest": v.version == latest} for v in found])
        return
    table(["version", "latest", "excluded", "disks", "size", "published", "end of life"],
          [[v.version, "*" if v.version == latest else "", "yes" if v.exclude_from_latest else "",
            len(v.disks), human_bytes(v.disks[0]["virtual_size"]), v.published, v.end_of_life] for v in found])


@version_app.command("show")
def version_show(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z or @latest")]) -> None:
    """Show a version: disks, provenance, publishing settings."""
    from imgtool.gallery import lookup

    st = state(ctx)
    v, digest = lookup.get_version(st.home, ref)
    if st.json:
        emit_json(version_json(v, digest))
        return
    pairs: list[tuple[str, Any]] = [
        ("version", f"{v.gallery}/{v.definition}@{v.version}"), ("record", digest), ("os state", v.os_state),
        ("published", v.published), ("exclude from latest", v.exclude_from_latest),
        ("end of life", v.end_of_life), ("block deletion before eol", v.block_deletion_before_end_of_life),
        ("updated", v.updated)]
    for disk in v.disks:
        label = "os disk" if disk.lun is None else f"data disk {disk.lun}"
        origin = disk.source.get("path") or disk.source.get("name") or disk.source.get("kind")
        pairs.append((label, f"{disk.digest} {human_bytes(disk.virtual_size)} from {origin}"))
    pairs.append(("audit", _audit_line(v.audit)))
    fields(pairs)


def _audit_line(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "none (not published into a generalized definition)"
    if not audit.get("audited"):
        return f"not audited: {audit.get('reason')}"
    found = [f"{f['check']} ({f['severity']})" for f in audit.get("findings", [])]
    verdict = "clean" if audit.get("clean") else "IDENTITY FOUND"
    if audit.get("allowed_identity"):
        verdict += ", published with --allow-identity"
    facts = audit.get("facts") or {}
    if facts.get("boot_mode_ok") is False:
        verdict += f"; boot MISMATCH (layout boots {', '.join(facts.get('boot_modes') or []) or 'nothing'}, " \
                   f"definition says {facts.get('firmware')})"
    return f"{verdict}; {facts.get('os') or 'unknown OS'}; " + (", ".join(found) or "no findings")


@version_app.command("resolve")
def version_resolve(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION")],
    explain: Annotated[bool, Opt(help="List every candidate and why it was chosen or dropped.")] = False,
) -> None:
    """Say which version `latest` picks: the highest not excluded from latest (publish time plays no part)."""
    from imgtool.gallery import lookup

    st = state(ctx)
    r = parse_definition_ref(ref)
    chosen, verdicts = lookup.resolve(st.home, r)
    if st.json:
        emit_json({"definition": str(r), "latest": None if chosen is None else str(chosen),
                   "candidates": [{"version": str(v.version), "chosen": v.chosen, "reason": v.reason}
                                  for v in verdicts]})
        return
    print(f"{r}@latest -> {chosen if chosen else 'nothing (no eligible version)'}")
    if explain:
        table(["version", "verdict"], [[str(v.version), v.reason] for v in verdicts])


@version_app.command("update")
def version_update(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")],
    exclude_from_latest: Annotated[bool | None, Opt("--exclude-from-latest/--include-in-latest")] = None,
    end_of_life: Annotated[str | None, Opt(help="YYYY-MM-DD")] = None,
    block_deletion: Annotated[bool | None, Opt("--block-deletion/--allow-deletion",
                                               help="Block deletion before end of life.")] = None,
) -> None:
    """Change a version's publishing settings (its content never changes)."""
    from imgtool.gallery import image_versions, lookup

    st = state(ctx)
    changes: dict[str, Any] = {}
    if exclude_from_latest is not None:
        changes["exclude_from_latest"] = exclude_from_latest
    if end_of_life is not None:
        changes["end_of_life"] = end_of_life
    if block_deletion is not None:
        changes["block_deletion_before_end_of_life"] = block_deletion
    if not changes:
        raise InvalidArgument("nothing to update", hint="give --exclude-from-latest, --end-of-life, ...")
    image_versions.update_version(st.home, ref, **changes)
    if st.json:
        emit_json(version_json(*lookup.get_version(st.home, ref)))
        return
    print(f"updated {ref}")


@version_app.command("delete")
def version_delete(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")]) -> None:
    """Delete a version (refused while VMs use it). Its data is freed by imgtool gc."""
    from imgtool.gallery import image_versions

    st = state(ctx)
    image_versions.delete_version(st.home, ref)
    emit_json({"deleted": ref}) if st.json else print(f"deleted {ref}")


@version_app.command("export")
def version_export(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z or @latest")],
    out: Annotated[Path, Arg(help="Output file.")],
    fmt: Annotated[str, Opt("--format", help="qcow2 or raw.")] = "qcow2",
    disk: Annotated[int | None, Opt("--disk", help="Data disk LUN (default: the OS disk).")] = None,
) -> None:
    """Write one disk of a version back out as a file."""
    from imgtool.gallery import image_versions

    st = state(ctx)
    bar = ProgressBar(f"exporting {ref}", enabled=not st.json)
    try:
        exported = image_versions.export(st.home, ref, out, fmt=fmt, lun=disk, progress=bar)
    finally:
        bar.close()
    if st.json:
        emit_json({"path": str(out), "format": fmt, "digest": exported.digest, "virtual_size": exported.virtual_size})
        return
    print(f"wrote {out} ({fmt}, {human_bytes(exported.virtual_size)})")
