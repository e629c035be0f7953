"""imgtool capture, imgtool publish, imgtool version …"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, fields, state, table, warn
from imgtool.errors import InvalidArgument
from imgtool.flows import shapes
from imgtool.flows.shapes import human_bytes
from imgtool.names import DefinitionRef, Version, parse_definition_ref

if TYPE_CHECKING:
    from imgtool.gallery.lifecycle_model import BootCheck, CheckResult
    from imgtool.gallery.model import ImageVersion
    from imgtool.gallery.version_index import Summary
    from imgtool.home import Home

version_app = typer.Typer(help="Image versions (GALLERY/DEFINITION@X.Y.Z; made by imgtool publish): list, show, "
                          "resolve latest, update, delete, restore, check, revoke, unrevoke, users, export, verify, "
                          "warm.",
                          no_args_is_help=True)
Opt = typer.Option
Arg = typer.Argument


def image_versions_rules() -> str:
    from imgtool.gallery.disk_rules import DATA_DISK_RULES  # not image_versions: --help must stay light

    return DATA_DISK_RULES


def register(app: typer.Typer) -> None:
    app.command("capture")(capture)
    app.command("publish")(publish)


def capture(
    ctx: typer.Context,
    source: Annotated[str, Arg(help="A disk file (qcow2, raw, vmdk, vpc, vhdx), blake3:DIGEST, "
                                    "GALLERY/DEF@X.Y.Z[:SEL], vm:NAME[:SEL] or snapshot:VM/SNAP[:SEL]; SEL is a "
                                    "data disk's LUN or os (the default).")],
    fmt: Annotated[str | None, Opt("--format", help="Assert the file's format; a mismatch with what its "
                                                     "bytes say is an error.")] = None,
    allow_nested_image: Annotated[bool, Opt(help="Store a disk whose content is itself an image file "
                                                 "(refused by default: a guest would see a host image; recorded).")]
    = False,
) -> None:
    """Inspect a source and ingest its disk into the store; print the disk's digest.

    Untrusted files are checked before any QEMU tool opens them (backing files, external data files,
    VMDK extents, absurd sizes are refused). Only allocated data is read; identical chunks are stored once.
    An unpublished capture is kept for 24 hours (see imgtool gc)."""
    from imgtool.capture import sources
    from imgtool.gallery.lookup import version_disks

    st = state(ctx)
    bar = ProgressBar(f"capturing {Path(source).name}", enabled=not st.json)
    try:
        captured = sources.capture(st.home, source, versions=version_disks(st.home), fmt=fmt, progress=bar,
                                   allow_nested=allow_nested_image)
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
    os_disk: Annotated[str, Opt(help="The OS disk: a file, blake3:DIGEST, GALLERY/DEF@X.Y.Z[:SEL], "
                                     "vm:NAME[:SEL] or snapshot:VM/SNAP[:SEL] (SEL: a LUN or os).")],
    data_disk: Annotated[list[str] | None, Opt(metavar="LUN=SOURCE", help="A data disk at LUN 0..63 "
                                               "(repeatable); see the rules below.")] = None,
    replace_data_disks: Annotated[bool, Opt(help="Let --data-disk replace a data disk the OS disk's source "
                                                 "brings at the same LUN.")] = False,
    exclude_from_latest: Annotated[bool, Opt(help="Never pick this version as latest.")] = False,
    end_of_life: Annotated[str | None, Opt(help="YYYY-MM-DD (informational; updatable).")] = None,
    block_deletion_before_end_of_life: Annotated[bool, Opt(help="Refuse deletion before end of life.")] = False,
    os_state: Annotated[str | None, Opt(help="Declared OS state of the source (required for VM sources); must "
                                             "match the definition.")] = None,
    fmt: Annotated[str | None, Opt("--format", help="Assert the OS disk file's format.")] = None,
    allow_nested_image: Annotated[bool, Opt(help="Accept disks whose content is itself an image file "
                                                 "(recorded on each such disk).")] = False,
    check: Annotated[bool, Opt("--check", help="Then boot-check it (definitions that require a boot check).")]
    = False,
    replicate_to: Annotated[str | None, Opt(help="Target remotes R1,R2: push the version there after publishing "
                                                 "(a failure is recorded; imgtool replicate retries).")] = None,
    allow_identity: Annotated[bool, Opt(help="Generalized definitions: publish even if the audit finds machine "
                                             "identity (host keys, machine-id, cloud-init state); recorded.")]
    = False,
    allow_unaudited: Annotated[bool, Opt(help="Generalized definitions: publish a disk the audit cannot read (a "
                                              "root file system other than ext2/3/4, or data with no file system "
                                              "that is not all zeros); recorded.")] = False,
) -> None:
    """Publish a new, immutable image version from its disks. In a definition that requires a boot check it
    starts pending: latest skips it until imgtool version check (or --check here) sees it boot.

    Into a generalized definition the OS disk is audited first (see imgtool audit): SSH host keys, a
    machine-id or cloud-init instance state refuse the publish, and so does a guest OS the audit cannot
    read (a root file system other than ext2/3/4). The audit is stored on the version."""
    from imgtool.cli import remote_cmds
    from imgtool.flows import publishing
    from imgtool.gallery import image_versions

    st = state(ctx)
    targets = remote_cmds.parse_targets(replicate_to)
    _hydrate_streamed(st.home, [os_disk, *(d.partition("=")[2] for d in data_disk or [])], quiet=st.json)
    request = image_versions.PublishRequest(
        ref=parse_definition_ref(ref), version=Version.parse(version), os_disk=os_disk,
        data_disks=tuple(image_versions.parse_data_disk(d) for d in data_disk or []), os_state=os_state,
        exclude_from_latest=exclude_from_latest, end_of_life=end_of_life,
        block_deletion_before_end_of_life=block_deletion_before_end_of_life, source_format=fmt,
        replace_data_disks=replace_data_disks, allow_nested=allow_nested_image, allow_identity=allow_identity,
        allow_unaudited=allow_unaudited)
    bar = ProgressBar(f"publishing {ref}@{version}", enabled=not st.json)
    try:
        published = publishing.publish(st.home, request, check=check, targets=targets, progress=bar,
                                       started=None if st.json else _checking)
    finally:
        bar.close()
    label = published.version.label
    if not st.json:
        print(f"published {ref}@{published.version.version}"
              + (" (pending its boot check)" if published.version.check else ""))
    replicas = remote_cmds.report_replicas(label, published.replicas, quiet=st.json)
    if st.json:
        emit_json({**shapes.version_of(st.home, label), **({"replication": replicas} if targets else {})})
    if published.check is not None:
        _report_check(label, published.check, st.json)


def _status(v: "Summary") -> str:
    """Why a version is not eligible for latest, in one word or two."""
    words = ["revoked" if v.revoked else "", "excluded" if v.exclude_from_latest else "",
             v.check if v.check in ("pending", "failed") else ""]
    return ",".join(w for w in words if w)


publish.__doc__ = (f"{publish.__doc__}\n\n\b\n{image_versions_rules()}")


@version_app.command("list")
def version_list(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION")],
    deleted: Annotated[bool, Opt("--deleted", help="List the deleted versions still kept (restorable).")] = False,
) -> None:
    """List the versions of a definition, lowest first; the one `latest` picks is marked. STATUS says
    what keeps a version out of latest: revoked, excluded, pending or failed (its boot check)."""
    from imgtool.gallery import lookup

    st = state(ctx)
    r = parse_definition_ref(ref)
    if deleted:
        _list_deleted(st.home, r, st.json)
        return
    found = lookup.list_versions(st.home, r)
    latest = str(lookup.latest_of(found)[0])
    if st.json:
        emit_json([{**shapes.ref_parts(r.gallery, r.definition, v.version), **v.to_json(),
                    "latest": v.version == latest} for v in found])
        return
    table(["version", "latest", "status", "disks", "size", "published", "end of life"],
          [[v.version, "*" if v.version == latest else "", _status(v),
            len(v.disks), human_bytes(v.disks[0]["virtual_size"]), v.published, v.end_of_life] for v in found])


def _list_deleted(home: "Home", r: DefinitionRef, as_json: bool) -> None:
    from imgtool.gallery import galleries, recycle

    galleries.get_definition(home, r)
    kept = recycle.items(home, galleries.VERSIONS, r.gallery, r.definition)
    if as_json:
        emit_json([{**i.to_json(), **shapes.ref_parts(r.gallery, r.definition, i.key[-1])} for i in kept])
        return
    table(["version", "deleted", "kept until"], [[i.key[-1], i.deleted_at, i.purge_after] for i in kept])


@version_app.command("show")
def version_show(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z or @latest")]) -> None:
    """Show a version: disks, provenance, publishing settings, replication targets."""
    from imgtool.cli import remote_cmds, warm_cmds
    from imgtool.flows import version_facts
    from imgtool.gallery import lookup

    st = state(ctx)
    v, digest = lookup.get_version(st.home, ref)
    if st.json:
        emit_json({**shapes.version_of(st.home, ref), **version_facts.facts(st.home, v, digest)})
        return
    pairs: list[tuple[str, Any]] = [
        ("version", f"{v.gallery}/{v.definition}@{v.version}"), ("record", digest), ("os state", v.os_state),
        ("published", v.published), ("exclude from latest", v.exclude_from_latest),
        ("end of life", v.end_of_life), ("block deletion before eol", v.block_deletion_before_end_of_life),
        ("boot check", v.check.describe() if v.check else "not required"),
        ("revoked", f"{v.revocation.reason} (since {v.revocation.when})" if v.revocation else None),
        ("updated", v.updated)]
    for disk in v.disks:
        label = "os disk" if disk.lun is None else f"data disk {disk.lun}"
        origin = disk.source.get("path") or disk.source.get("name") or disk.source.get("kind")
        pairs.append((label, f"{disk.digest} {human_bytes(disk.virtual_size)} from {origin}"))
    pulled = v.pulled_from
    if pulled is not None:
        pairs.append(("pulled from", f"{pulled.remote}:{pulled.repository}:{pulled.tag} {pulled.manifest[:19]}"))
    pairs.extend(remote_cmds.replication_rows(st.home, v.gallery, v.definition, v.version))
    pairs.append(("audit", _audit_line(v.audit)))
    pairs.extend(warm_cmds.warm_rows(st.home, digest))
    pairs.append(("boot profile", _profile_line(version_facts.profile(st.home, v))))
    fields(pairs)
    if v.check and v.check.console_tail:
        print("console tail of the failed check:")
        print(v.check.console_tail.rstrip("\n"))


def _profile_line(profile: dict[str, Any] | None) -> str:
    if profile is None:
        return "none (a passing boot check records one)"
    if profile["problem"]:
        return f"damaged, ignored by streams: {profile['problem']}"
    return f"{profile['chunks']} chunks in first-read order, fetched first when streamed"


def _audit_line(audit: dict[str, Any] | None) -> str:
    if audit is None:
        return "none (not published into a generalized definition)"
    if not audit.get("audited"):
        allowed = ", published with --allow-unaudited" if audit.get("allowed_unaudited") else ""
        return f"not audited{allowed}: {audit.get('reason')}"
    if audit.get("empty"):
        return "empty (every byte of the disk is zero: no guest OS)"
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
    """Say which version `latest` picks: the highest not excluded from latest, not revoked and not held back
    by a pending or failed boot check (publish time plays no part)."""
    from imgtool.gallery import lookup

    st = state(ctx)
    r = parse_definition_ref(ref)
    chosen, verdicts = lookup.resolve(st.home, r)
    if st.json:
        emit_json({"ref": str(r), "gallery": r.gallery, "definition": r.definition,
                   "latest": None if chosen is None else str(chosen),
                   "resolves_to": None if chosen is None else f"{r}@{chosen}",
                   "candidates": [{**shapes.ref_parts(r.gallery, r.definition, str(v.version)), "latest": v.chosen,
                                   "reason": v.reason} for v in verdicts]})
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
    promote: Annotated[bool, Opt("--promote", help="Let a pending or failed version into latest without a "
                                                   "passing boot check (recorded).")] = False,
    replicate_to: Annotated[str | None, Opt(help="Add replication targets R1,R2 (and replicate now).")] = None,
    no_replicate_to: Annotated[str | None, Opt(help="Remove replication targets R1,R2.")] = None,
) -> None:
    """Change a version's publishing settings (its content never changes) or its replication targets."""
    from imgtool.cli import remote_cmds
    from imgtool.flows import replication
    from imgtool.gallery import version_changes
    from imgtool.vm import checks

    st = state(ctx)
    if promote:
        warn(checks.promote(st.home, ref)[1])
    changes: dict[str, Any] = {}
    if exclude_from_latest is not None:
        changes["exclude_from_latest"] = exclude_from_latest
    if end_of_life is not None:
        changes["end_of_life"] = end_of_life
    if block_deletion is not None:
        changes["block_deletion_before_end_of_life"] = block_deletion
    add = remote_cmds.check_targets(st.home, replicate_to)
    remove = replication.parse_targets(no_replicate_to)
    if not changes and not add and not remove and not promote:
        raise InvalidArgument("nothing to update", hint="give --exclude-from-latest, --end-of-life, "
                              "--promote, --replicate-to, ...")
    if changes:
        version_changes.update_version(st.home, ref, **changes)
    replicas = remote_cmds.replicate_now(st.home, ref, add=add, remove=remove, quiet=st.json)
    if st.json:
        emit_json({**shapes.version_of(st.home, ref), "replication": replicas})
        return
    print(f"updated {ref}")


@version_app.command("delete")
def version_delete(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")],
    purge: Annotated[bool, Opt("--purge", help="Delete for good now, without the retention period.")] = False,
) -> None:
    """Delete a version (refused while VMs use it). It is kept as deleted for 7 days (imgtool version restore
    brings it back); imgtool gc frees its data after that, or right away with --purge."""
    from imgtool.gallery import version_changes

    st = state(ctx)
    kept = version_changes.delete_version(st.home, ref, purge=purge)
    if st.json:
        emit_json({"deleted": ref, "purged": kept is None, "kept_until": kept and kept.purge_after})
        return
    print(f"deleted {ref}" + (f" (restorable until {kept.purge_after})" if kept else " for good"))


@version_app.command("restore")
def version_restore(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")]) -> None:
    """Bring a deleted version back, exactly as it was (same record, same disks)."""
    from imgtool.gallery import removal

    st = state(ctx)
    restored = removal.restore_version(st.home, ref)
    if st.json:
        emit_json(shapes.version_of(st.home, restored.label))
        return
    print(f"restored {restored.label}")


def _report_check(label: str, result: "CheckResult", as_json: bool) -> None:
    if not as_json:
        print(f"boot check of {label}: {result.describe()}")
        if result.console_tail:
            print("console tail:\n" + result.console_tail.rstrip("\n"))
    if result.state == "failed":
        raise typer.Exit(1)


@version_app.command("check")
def version_check(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")],
    timeout: Annotated[int | None, Opt(help="Seconds to wait (default: the definition's boot timeout).")] = None,
    accel: Annotated[str | None, Opt(help="kvm or tcg (default: probe).")] = None,
) -> None:
    """Boot-check a version: make a throwaway VM from it, wait for the definition's check (ssh, cloud-init or
    a console line), delete the VM, and record passed or failed on the version. Exit 1 when it failed."""
    from imgtool.vm import checks

    st = state(ctx)
    result = checks.check_version(st.home, ref, timeout=timeout, accel=accel, started=None if st.json else _checking)
    if st.json:
        emit_json({"ref": ref, **result.to_json()})
    _report_check(ref, result, st.json)


def _hydrate_streamed(home: "Home", sources: list[str], *, quiet: bool) -> None:
    """A VM (or a snapshot of one) that still streams its version is captured once every chunk of its base
    is here: fetch the rest first (as imgtool vm hydrate --wait), then publish reads an ordinary chain."""
    from imgtool.stream import vms as streamed
    from imgtool.vm import bases
    from imgtool.vm.record import is_streaming, load

    for text in sources:
        kind, _, rest = text.partition(":")
        name = rest.partition(":")[0].partition("/")[0] if kind in ("vm", "snapshot") else ""
        if name and is_streaming(home, name):
            if not quiet:
                sys.stderr.write(f"VM {name} still streams its version: fetching the rest first "
                                 f"(progress: imgtool vm show {name})\n")
            streamed.hydrate(home, name, wait=True)
            for disk in load(home, name).disks:  # a hydrated VM gets its base at its next start: now, here
                bases.ensure(home, disk.base_disk)


def _checking(name: str, check: "BootCheck") -> None:
    """A boot check can take minutes: say what it waits for and where to watch it."""
    sys.stderr.write(f"boot check: VM {name} is booting; waiting up to {check.timeout}s for {check.describe()} "
                     f"(watch: imgtool vm console {name} --follow)\n")
    sys.stderr.flush()


@version_app.command("revoke")
def version_revoke(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")],
    reason: Annotated[str | None, Opt(help="Why (shown on every VM standing on it).")] = None,
    push: Annotated[list[str] | None, Opt("--push", help="Also attach a signed revocation statement to the "
                                                         "version on this remote (repeatable).")] = None,
    sign: Annotated[str | None, Opt("--sign", help="With --push: the signing key (default: the remote's "
                                                   "signing key).")] = None,
) -> None:
    """Revoke a version: never latest again, refused by vm new (unless --allow-revoked), and every VM standing
    on it is flagged. With --push the revocation reaches a remote as a statement signed like a signature;
    pull and vm new from it refuse the version, and imgtool remote sync marks other stores' copies. A
    version already revoked here can be pushed again without --reason."""
    from imgtool.gallery import lookup, revocation

    st = state(ctx)
    current, _ = lookup.get_version(st.home, ref)
    if reason is None and (current.revocation is None or not push):
        raise InvalidArgument("--reason is required", hint="say why it is revoked, e.g. --reason 'CVE-2026-1234'")
    if reason is not None:
        current, vms = revocation.revoke(st.home, ref, reason)
    else:
        vms = vmrecord_users(st.home, current)
    pushed = [_push_revocation(st.home, ref, remote, sign) for remote in push or []]
    if st.json:
        emit_json({"ref": current.label, "revocation": current.revocation and current.revocation.to_json(),
                   "vms": vms, "pushed": pushed})
        return
    print(f"revoked {current.label}" + (f"; VMs standing on it: {', '.join(vms)}" if vms else ""))
    for item in pushed:
        print(f"revocation attached on {item['remote']} ({item['repository']}, signed by {item['key_id'][:19]}...)")


def vmrecord_users(home: "Home", version: "ImageVersion") -> list[str]:
    from imgtool.vm import record as vmrecord

    return vmrecord.vms_using(home, version.gallery, version.definition, version.version)


def _push_revocation(home: "Home", ref: str, remote: str, key: str | None) -> dict[str, Any]:
    from imgtool.flows import revoking

    return revoking.push_revocation(home, ref, remote, key_name=key)


@version_app.command("users")
def version_users(ctx: typer.Context, ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z")]) -> None:
    """List what comes from a version, locally: the VMs standing on it and the versions captured or copied
    from it (and from those, transitively), with the VMs standing on them."""
    from imgtool.gallery import users

    st = state(ctx)
    found = users.users(st.home, ref)
    if st.json:
        emit_json(found.to_json())
        return
    print(f"versions from {found.version}:")
    table(["version", "captured from"], [[v["version"], v["parent"]] for v in found.versions])
    print("VMs:")
    table(["vm", "image"], [[v["name"], v["image"]] for v in found.vms])


@version_app.command("export")
def version_export(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="GALLERY/DEFINITION@X.Y.Z or @latest")],
    out: Annotated[Path, Arg(help="Output file (.qcow2, .raw, .img, .vhd or .vmdk gives the format).")],
    fmt: Annotated[str | None, Opt("--format", help="qcow2, raw, vhd (fixed, size rounded up to a whole MiB, as "
                                                    "Azure requires; alias vpc) or vmdk (streamOptimized) "
                                                    "(default: from the file's extension).")] = None,
    disk: Annotated[int | None, Opt("--disk", help="Data disk LUN (default: the OS disk).")] = None,
    force: Annotated[bool, Opt("--force", help="Overwrite an existing output file.")] = False,
) -> None:
    """Write one disk of a version back out as a file (mode 0666 less the umask, like any new file)."""
    from imgtool.gallery import export_formats, image_versions

    st = state(ctx)
    target = export_formats.choose(out, fmt)
    bar = ProgressBar(f"exporting {ref}", enabled=not st.json)
    try:
        exported = image_versions.export(st.home, ref, out, fmt=target.name, lun=disk, progress=bar, force=force)
    finally:
        bar.close()
    size = target.size_of(exported.virtual_size)
    if st.json:
        emit_json({"path": str(out), "format": target.name, "lun": disk, "digest": exported.digest,
                   "virtual_size": exported.virtual_size, "exported_virtual_size": size})
        return
    grown = f", rounded up to {human_bytes(size)}" if size != exported.virtual_size else ""
    print(f"wrote {out} ({target.name}, {human_bytes(exported.virtual_size)}{grown})")
