"""imgtool gallery … and imgtool definition …"""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import emit_json, fields, state, table
from imgtool.errors import InvalidArgument
from imgtool.flows import shapes
from imgtool.gallery.model import Definition, Range, check_date
from imgtool.names import parse_definition_ref
from imgtool.tools.qemu import MIN_MEMORY_MIB
from imgtool.vm.options import MAX_CPUS, MAX_MEMORY_MIB

if TYPE_CHECKING:
    from imgtool.gallery.lifecycle_model import BootCheck
    from imgtool.gallery.recycle import DeletedItem
    from imgtool.home import Home

gallery_app = typer.Typer(help="Galleries: named collections of image definitions.", no_args_is_help=True)
definition_app = typer.Typer(help="Image definitions (GALLERY/DEFINITION): what an image is; versions live "
                             "under them.", no_args_is_help=True)


def _recommended(vcpus: Range, memory: Range) -> tuple[Range, Range]:
    """A recommendation no VM could meet is refused when it is given, not at the first vm new."""
    for bound, option in ((vcpus.min, "--min-vcpus"), (vcpus.max, "--max-vcpus")):
        if bound is not None and bound > MAX_CPUS:
            raise InvalidArgument(f"{option} {bound} is above what a VM can have ({MAX_CPUS} vCPUs)",
                                  hint=f"give 1..{MAX_CPUS}")
    for bound, option in ((memory.min, "--min-memory"), (memory.max, "--max-memory")):
        if bound is not None and not MIN_MEMORY_MIB <= bound <= MAX_MEMORY_MIB:
            raise InvalidArgument(f"{option} {bound} MiB is outside what a VM can have "
                                  f"({MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} MiB)", hint="memory is in MiB, e.g. 512")
    return vcpus, memory


@gallery_app.command("create")
def gallery_create(ctx: typer.Context, name: str,
                   description: Annotated[str, typer.Option(help="What the gallery is for.")] = "") -> None:
    """Create a gallery."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    created = gallery.create_gallery(st.home, name, description)
    emit_json(shapes.gallery(created)) if st.json else print(f"created gallery {name}")


def _list_deleted(home: "Home", prefix: tuple[str, ...], as_json: bool) -> None:
    from imgtool.gallery import recycle

    kept = recycle.items(home, *prefix)
    if as_json:
        emit_json([{"name": i.label, **i.to_json()} for i in kept])
        return
    table(["name", "deleted", "kept until"], [[i.label, i.deleted_at, i.purge_after] for i in kept])


@gallery_app.command("list")
def gallery_list(
    ctx: typer.Context,
    deleted: Annotated[bool, typer.Option("--deleted", help="List the deleted galleries still kept.")] = False,
) -> None:
    """List galleries."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    if deleted:
        _list_deleted(st.home, (gallery.GALLERIES,), st.json)
        return
    found = gallery.list_galleries(st.home)
    if st.json:
        emit_json([shapes.gallery(g) for g in found])
        return
    table(["name", "description", "created"], [[g.name, g.description, g.created] for g in found])


@gallery_app.command("show")
def gallery_show(ctx: typer.Context, name: str) -> None:
    """Show a gallery and its definitions."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    g = gallery.get_gallery(st.home, name)
    defs = [d.name for d in gallery.list_definitions(st.home, name)]
    if st.json:
        emit_json({**shapes.gallery(g), "definitions": defs})
        return
    fields([("name", g.name), ("description", g.description), ("created", g.created), ("updated", g.updated),
            ("definitions", ", ".join(defs))])


@gallery_app.command("update")
def gallery_update(ctx: typer.Context, name: str,
                   description: Annotated[str, typer.Option(help="New description.")]) -> None:
    """Change a gallery's description (the only updatable field)."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    updated = gallery.update_gallery(st.home, name, description=description)
    emit_json(shapes.gallery(updated)) if st.json else print(f"updated gallery {name}")


def _deleted(what: str, name: str, kept: "DeletedItem | None", as_json: bool) -> None:
    if as_json:
        emit_json({"deleted": name, "purged": kept is None, "kept_until": kept and kept.purge_after})
        return
    print(f"deleted {what} {name}" + (f" (restorable until {kept.purge_after})" if kept else " for good"))


@gallery_app.command("delete")
def gallery_delete(
    ctx: typer.Context,
    name: str,
    purge: Annotated[bool, typer.Option("--purge", help="Delete for good now (with the deleted definitions and "
                                                        "versions kept under it).")] = False,
) -> None:
    """Delete a gallery without definitions (deleted ones do not count). It is kept as deleted for 7 days
    (imgtool gallery restore brings it back), unless --purge."""
    from imgtool.gallery import removal

    st = state(ctx)
    _deleted("gallery", name, removal.delete_gallery(st.home, name, purge=purge), st.json)


@gallery_app.command("restore")
def gallery_restore(ctx: typer.Context, name: str) -> None:
    """Bring a deleted gallery back (its deleted definitions are restored one by one)."""
    from imgtool.gallery import removal

    st = state(ctx)
    restored = removal.restore_gallery(st.home, name)
    emit_json(shapes.gallery(restored)) if st.json else print(f"restored gallery {name}")


def _pairs(values: list[str] | None, what: str) -> tuple[tuple[str, str], ...]:
    result = []
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} '{item}' is not KEY=VALUE", hint=f"e.g. --{what} team=infra")
        result.append((key, value))
    return tuple(sorted(result))


def definition_json(d: Definition) -> dict[str, Any]:
    return shapes.definition(d)


Opt = typer.Option


@definition_app.command("create")
def definition_create(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION")],
    publisher: Annotated[str, Opt(help="Identifier: publisher (publisher/offer/sku is unique in a gallery).")],
    offer: Annotated[str, Opt(help="Identifier: offer.")],
    sku: Annotated[str, Opt(help="Identifier: sku.")],
    os_type: Annotated[str, Opt(help="linux or windows.")],
    os_state: Annotated[str, Opt(help="generalized (VMs get provisioning data) or specialized (they keep "
                                      "the source's identity).")],
    firmware: Annotated[str, Opt(help="bios or uefi.")] = "bios",
    architecture: Annotated[str, Opt(help="x86_64 or aarch64.")] = "x86_64",
    min_vcpus: Annotated[int | None, Opt(help="Recommended minimum vCPUs.")] = None,
    max_vcpus: Annotated[int | None, Opt(help="Recommended maximum vCPUs.")] = None,
    min_memory: Annotated[int | None, Opt(help="Recommended minimum memory (MiB).")] = None,
    max_memory: Annotated[int | None, Opt(help="Recommended maximum memory (MiB).")] = None,
    disallow_format: Annotated[list[str] | None, Opt(help="Disk format not allowed (repeatable).")] = None,
    description: Annotated[str, Opt()] = "",
    eula: Annotated[str, Opt()] = "",
    privacy_uri: Annotated[str, Opt()] = "",
    release_notes_uri: Annotated[str, Opt()] = "",
    end_of_life: Annotated[str | None, Opt(help="YYYY-MM-DD (informational).")] = None,
    feature: Annotated[list[str] | None, Opt(help="NAME=VALUE, e.g. SecureBoot=true (repeatable).")] = None,
    tag: Annotated[list[str] | None, Opt(help="KEY=VALUE (repeatable).")] = None,
    require_boot_check: Annotated[bool, Opt("--require-boot-check", help="New versions start pending: latest "
                                            "skips them until imgtool version check sees them boot.")] = False,
    boot_check: Annotated[str | None, Opt(help="ssh (default), cloud-init (both need a generalized image) "
                                               "or console:TEXT.")] = None,
    boot_timeout: Annotated[int | None, Opt(help="Seconds a boot check may take (default 300).")] = None,
) -> None:
    """Create an image definition."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    r = parse_definition_ref(ref)
    definition = Definition(
        gallery=r.gallery, name=r.definition, publisher=publisher, offer=offer, sku=sku,
        os_type=os_type, os_state=os_state, firmware=firmware, architecture=architecture,
        vcpus=_recommended(Range(min_vcpus, max_vcpus), Range())[0],
        memory_mib=_recommended(Range(), Range(min_memory, max_memory))[1],
        disallowed_disk_formats=tuple(disallow_format or ()), description=description, eula=eula,
        privacy_uri=privacy_uri, release_notes_uri=release_notes_uri,
        end_of_life=check_date(end_of_life, "end of life"), features=_pairs(feature, "feature"),
        tags=_pairs(tag, "tag"),
        boot_check=_boot_check(require_boot_check or None, boot_check, boot_timeout, None))
    gallery.create_definition(st.home, definition)
    emit_json(definition_json(definition)) if st.json else print(f"created definition {r}")


@definition_app.command("list")
def definition_list(
    ctx: typer.Context,
    gallery_name: Annotated[str, typer.Argument(metavar="GALLERY")],
    deleted: Annotated[bool, Opt("--deleted", help="List the deleted definitions still kept.")] = False,
) -> None:
    """List the definitions of a gallery."""
    from imgtool.gallery import galleries as gallery
    from imgtool.names import check_name

    st = state(ctx)
    if deleted:
        _list_deleted(st.home, (gallery.DEFINITIONS, check_name(gallery_name, "gallery")), st.json)
        return
    found = gallery.list_definitions(st.home, gallery_name)
    if st.json:
        emit_json([definition_json(d) for d in found])
        return
    table(["definition", "publisher/offer/sku", "os", "state", "firmware", "arch"],
          [[d.name, "/".join(d.identifier), d.os_type, d.os_state, d.firmware, d.architecture] for d in found])


@definition_app.command("show")
def definition_show(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION")]) -> None:
    """Show a definition."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    d = gallery.get_definition(st.home, parse_definition_ref(ref))
    if st.json:
        emit_json(definition_json(d))
        return
    fields([("definition", f"{d.gallery}/{d.name}"), ("identifier", "/".join(d.identifier)),
            ("os type", d.os_type), ("os state", d.os_state), ("firmware", d.firmware),
            ("architecture", d.architecture), ("vcpus", d.vcpus.describe()),
            ("memory (MiB)", d.memory_mib.describe()),
            ("disallowed formats", ", ".join(d.disallowed_disk_formats)), ("description", d.description),
            ("eula", d.eula), ("privacy uri", d.privacy_uri), ("release notes", d.release_notes_uri),
            ("end of life", d.end_of_life), ("features", ", ".join(f"{k}={v}" for k, v in d.features)),
            ("tags", ", ".join(f"{k}={v}" for k, v in d.tags)),
            ("boot check", f"{d.boot_check.describe()} within {d.boot_check.timeout}s" if d.boot_check
             else "not required"), ("created", d.created), ("updated", d.updated)])


@definition_app.command("update")
def definition_update(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION")],
    description: Annotated[str | None, Opt()] = None,
    min_vcpus: Annotated[int | None, Opt()] = None,
    max_vcpus: Annotated[int | None, Opt()] = None,
    min_memory: Annotated[int | None, Opt(help="MiB")] = None,
    max_memory: Annotated[int | None, Opt(help="MiB")] = None,
    end_of_life: Annotated[str | None, Opt(help="YYYY-MM-DD")] = None,
    release_notes_uri: Annotated[str | None, Opt()] = None,
    tag: Annotated[list[str] | None, Opt(help="KEY=VALUE; replaces all tags (repeatable).")] = None,
    require_boot_check: Annotated[bool | None, Opt("--require-boot-check/--no-require-boot-check",
                                                   help="Whether new versions start pending a boot check.")]
    = None,
    boot_check: Annotated[str | None, Opt(help="ssh, cloud-init or console:TEXT.")] = None,
    boot_timeout: Annotated[int | None, Opt(help="Seconds a boot check may take.")] = None,
) -> None:
    """Change the updatable fields of a definition: description, recommended ranges, end of life, release
    notes, tags, boot check. Everything else is fixed at creation."""
    from imgtool.gallery import galleries as gallery

    st = state(ctx)
    r = parse_definition_ref(ref)
    current = gallery.get_definition(st.home, r)
    changes: dict[str, Any] = {}
    if description is not None:
        changes["description"] = description
    if min_vcpus is not None or max_vcpus is not None:
        changes["vcpus"] = Range(min_vcpus if min_vcpus is not None else current.vcpus.min,
                                 max_vcpus if max_vcpus is not None else current.vcpus.max)
    if min_memory is not None or max_memory is not None:
        changes["memory_mib"] = Range(min_memory if min_memory is not None else current.memory_mib.min,
                                      max_memory if max_memory is not None else current.memory_mib.max)
    if end_of_life is not None:
        changes["end_of_life"] = check_date(end_of_life, "end of life")
    if release_notes_uri is not None:
        changes["release_notes_uri"] = release_notes_uri
    if tag is not None:
        changes["tags"] = _pairs(tag, "tag")
    if require_boot_check is not None or boot_check is not None or boot_timeout is not None:
        changes["boot_check"] = _boot_check(require_boot_check, boot_check, boot_timeout, current.boot_check)
    if not changes:
        raise InvalidArgument("nothing to update", hint="give at least one option; see --help")
    _recommended(changes.get("vcpus", Range()), changes.get("memory_mib", Range()))
    updated = gallery.update_definition(st.home, r, **changes)
    emit_json(definition_json(updated)) if st.json else print(f"updated definition {r}")


@definition_app.command("delete")
def definition_delete(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION")],
    purge: Annotated[bool, Opt("--purge", help="Delete for good now (with its deleted versions).")] = False,
) -> None:
    """Delete a definition without versions (deleted ones do not count). It is kept as deleted for 7 days
    (imgtool definition restore brings it back), unless --purge."""
    from imgtool.gallery import removal

    st = state(ctx)
    r = parse_definition_ref(ref)
    _deleted("definition", str(r), removal.delete_definition(st.home, r, purge=purge), st.json)


@definition_app.command("restore")
def definition_restore(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION")]) -> None:
    """Bring a deleted definition back (its deleted versions are restored one by one)."""
    from imgtool.gallery import removal

    st = state(ctx)
    restored = removal.restore_definition(st.home, parse_definition_ref(ref))
    emit_json(definition_json(restored)) if st.json else print(f"restored definition {ref}")


def _boot_check(require: bool | None, kind: str | None, timeout: int | None,
                current: "BootCheck | None") -> "BootCheck | None":
    """The definition's boot check from the options: None to clear it, `current` if untouched."""
    from imgtool.gallery.lifecycle_model import DEFAULT_BOOT_TIMEOUT, BootCheck

    if require is False:
        if kind is not None or timeout is not None:
            raise InvalidArgument("--boot-check and --boot-timeout go with --require-boot-check",
                                  hint="drop them, or require the check")
        return None
    if require is None and current is None:
        if kind is not None or timeout is not None:
            raise InvalidArgument("--boot-check and --boot-timeout need --require-boot-check",
                                  hint="add --require-boot-check")
        return None
    base = current or BootCheck()
    kind_text = kind if kind is not None else base.describe()
    return BootCheck.parse(kind_text, timeout if timeout is not None else (base.timeout or DEFAULT_BOOT_TIMEOUT))
