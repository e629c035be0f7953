"""imgtool verify, imgtool gc, imgtool optimize, imgtool du"""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, state, table
from imgtool.errors import Corrupt, InvalidArgument
from imgtool.flows.shapes import human_bytes

if TYPE_CHECKING:
    from imgtool.garbage import GcPlan
    from store.verify import Report

Opt = typer.Option
MAX_LISTED = 20  # items shown per kind in the text plan; --json has them all


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
    app.command("gc")(gc)
    app.command("optimize")(optimize)
    app.command("du")(du)


def verify(
    ctx: typer.Context,
    deep: Annotated[bool, Opt(help="Re-hash every stored chunk and every VM base.")] = False,
    repair: Annotated[bool, Opt(help="Rebuild damaged pack indexes from their packs and damaged VM bases "
                                     "from the store's chunks, and set damaged chunks aside so that "
                                     "capturing the same source again restores them.")] = False,
) -> None:
    """Check that every name resolves to complete content (and with --deep, that all data is intact).

    Exits non-zero when anything is damaged, naming the versions and VMs it affects."""
    from imgtool import maintenance
    from imgtool.vm import bases

    st = state(ctx)
    indexes = maintenance.repair_indexes(st.home) if repair else []
    rebuilt = bases.repair_all(st.home) if repair else []
    report, hit = maintenance.verify(st.home, deep=deep or repair)
    set_aside = maintenance.set_aside_damaged(st.home, report) if repair else []
    if set_aside:  # what the store now lacks, and what stands on it
        report, hit = maintenance.verify(st.home, deep=True)
    if st.json:
        emit_json({"ok": report.ok, "deep": deep, "names": report.names, "manifests": report.manifests,
                   "chunks": report.chunks, "chunks_hashed": report.chunks_hashed, "rebuilt_bases": rebuilt,
                   "rebuilt_indexes": indexes, "set_aside_chunks": set_aside,
                   "problems": [p.to_json() for p in report.problems], "affected": hit,
                   "garbage": [g.to_json() for g in report.garbage]})
    else:
        for pack in indexes:
            print(f"rebuilt index of pack {pack[:16]}")
        for base in rebuilt:
            print(f"rebuilt base {base[:16]}")
        for chunk in set_aside:
            print(f"set aside damaged chunk {chunk[:16]} (capture its source again to restore it)")
        for p in report.problems:
            print(f"DAMAGED {p.kind} {p.object[:16]}: {p.message}")
        for g in report.garbage:
            print(f"garbage {g.kind} {g.object[:16]}: {g.message}")
        for kind, names in hit.items():
            if names:
                print(f"affected {kind}: {', '.join(names)}")
        print(f"{'ok' if report.ok else 'FAILED'}: {report.names} names, {report.manifests} manifests, "
              f"{report.chunks} chunks" + (f", {report.chunks_hashed} chunks re-hashed" if deep else ""))
    if not report.ok:
        raise Corrupt(f"verify found {len(report.problems)} problem(s)", hint=_repair_hint(report, repair))


def _repair_hint(report: "Report", repaired: bool) -> str:
    chunks = any(p.kind == "chunk" for p in report.problems)
    if not repaired:
        return ("imgtool verify --repair rebuilds indexes and bases" +
                (" and sets damaged chunks aside; then capture the affected versions' sources again "
                 "(imgtool capture FILE) to restore them" if chunks else ""))
    return ("the chunks above are missing: capture the affected versions' sources again (imgtool capture FILE) "
            "to restore them, or delete those versions")


def gc(
    ctx: typer.Context,
    dry_run: Annotated[bool, Opt("--dry-run", help="Print the plan; delete nothing.")] = False,
    keep_captures: Annotated[float, Opt(help="Hours an unpublished capture is kept.")] = 24.0,
    wait: Annotated[float, Opt(help="Seconds to wait for other imgtool processes to finish.")] = 60.0,
) -> None:
    """Delete what no name, VM or recent capture needs: plan first, then execute.

    Prints each item with the reason it goes and the bytes it frees, then what is kept although
    nothing published needs it, and the command that would free it. Takes the store to itself
    (waits for running captures and publishes)."""
    from imgtool import garbage

    st = state(ctx)
    for option, value in (("--keep-captures", keep_captures), ("--wait", wait)):
        if not value >= 0:  # also refuses NaN
            raise InvalidArgument(f"{option} {value:g} is not a number of hours/seconds >= 0",
                                  hint=f"e.g. {option} 24" if option == "--keep-captures" else f"e.g. {option} 60")
    the_plan = garbage.gc(st.home, dry_run=dry_run, capture_retention=keep_captures * 3600, timeout=wait)
    if st.json:
        emit_json(the_plan.to_json(dry_run=dry_run))
        return
    _print_plan(the_plan, dry_run)


def _print_plan(the_plan: "GcPlan", dry_run: bool) -> None:
    by_kind: dict[str, list[Any]] = {}
    for item in the_plan.items:
        by_kind.setdefault(item.kind, []).append(item)
    for kind, items in by_kind.items():
        _wrapped(f"{kind} ({len(items)}): {items[0].reason}", "")
        for item in items[:MAX_LISTED]:
            print(f"  {item.name[:64]:<64} {human_bytes(item.bytes):>10}")
        if len(items) > MAX_LISTED:
            print(f"  ... and {len(items) - MAX_LISTED} more (--json lists all)")
    for kept in the_plan.kept:
        until = f" until {kept.until}" if kept.until else ""
        size = f" ({human_bytes(kept.bytes)})" if kept.bytes else ""
        _wrapped(f"kept {kept.kind} {kept.name}{size}: {kept.reason}{until}", "  ")
        _wrapped(f"to free it: {kept.hint}", "  ", first="  ")
    verb = "would free" if dry_run else "freed"
    print(f"{verb} {human_bytes(the_plan.bytes_freed)} ({len(the_plan.items)} items)")


def _wrapped(text: str, indent: str, *, first: str = "") -> None:
    import textwrap

    print("\n".join(textwrap.wrap(text, width=79, initial_indent=first, subsequent_indent=indent,
                                  break_on_hyphens=False, break_long_words=True)))


def optimize(
    ctx: typer.Context,
    dry_run: Annotated[bool, Opt("--dry-run", help="Say what it would rewrite and gain; change nothing.")] = False,
    gc: Annotated[bool, Opt("--gc", help="Collect garbage first, in the same hold of the store.")] = False,
    min_age: Annotated[float, Opt(help="Leave packs written in the last HOURS hours as they are.")] = 0.0,
    wait: Annotated[float, Opt(help="Seconds to wait for other imgtool processes to finish.")] = 60.0,
) -> None:
    """Recompress cold packs with a strong encoding, so the store is small at rest.

    Capture stores chunks with a fast codec; this rewrites them in frames of several chunks at a high
    zstd level. Chunk names, versions and VMs stay as they are. Takes the store to itself, like gc."""
    from imgtool import maintenance

    st = state(ctx)
    for option, value in (("--min-age", min_age), ("--wait", wait)):
        if not value >= 0:  # also refuses NaN
            raise InvalidArgument(f"{option} {value:g} is not a number of hours/seconds >= 0",
                                  hint=f"e.g. {option} 1" if option == "--min-age" else f"e.g. {option} 60")
    bar = ProgressBar("optimizing", enabled=not st.json and not dry_run)
    try:
        result = maintenance.optimize(st.home, dry_run=dry_run, with_gc=gc, min_age=min_age * 3600,
                                      progress=bar, timeout=wait)
    finally:
        bar.close()
    if st.json:
        emit_json(result.to_json())
        return
    if result.gc is not None:
        print(f"gc {'would free' if dry_run else 'freed'} {human_bytes(result.gc.bytes_freed)}")
    plan = result.plan
    if not plan["packs"]:
        print("nothing to optimize: every pack is already in the strong encoding")
    elif dry_run:
        print(f"would rewrite {_count(plan['packs'], 'pack')} ({_count(plan['chunks'], 'chunk')}): "
              f"{human_bytes(plan['stored_bytes'])} -> about {human_bytes(plan['estimated_bytes'])}")
    else:
        print(f"rewrote {_count(plan['packs'], 'pack')} into {result.done['packs_written']}: "
              f"{human_bytes(result.done['bytes_before'])} -> {human_bytes(result.done['bytes_after'])}")


def _count(n: int | None, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def du(ctx: typer.Context) -> None:
    """Disk usage: per version (logical size, data, stored compressed with shared chunks counted, bytes only
    that version holds), then unpublished captures, VM bases, VM folders and the totals on disk."""
    from imgtool import maintenance

    st = state(ctx)
    usage = maintenance.du(st.home)
    if st.json:
        emit_json(usage)
        return
    rows: list[list[Any]] = [[r["ref"], r["disks"], human_bytes(r["logical_bytes"]), human_bytes(r["data_bytes"]),
                              human_bytes(r["stored_bytes"]), human_bytes(r["unique_bytes"])]
                             for r in usage["versions"]]
    table(["version", "disks", "logical", "data", "stored", "unique"], rows)
    captures, base_info = usage["captures"], usage["bases"]
    print(f"unpublished captures: {captures['count']}, {human_bytes(captures['unpublished_bytes'])} only they hold")
    print(f"VM bases: {base_info['count']}, {human_bytes(base_info['bytes'])}")
    print(f"warm states: {usage['warm']['count']}, {human_bytes(usage['warm']['bytes'])}")
    print(f"VM folders: {len(usage['vms'])}, {human_bytes(sum(v['bytes'] for v in usage['vms']))}")
    print(f"store: {human_bytes(usage['store_bytes'])} on disk; home total: {human_bytes(usage['home_bytes'])}")
