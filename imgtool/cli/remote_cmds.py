"""imgtool remote …, imgtool push, imgtool pull, imgtool replicate"""

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import ProgressBar, emit_json, fields, state, table, warn
from imgtool.flows.shapes import human_bytes
from imgtool.home import Home
from imgtool.vocab import PullStatus

if TYPE_CHECKING:
    from imgtool.flows.replication import Outcome
    from imgtool.remote.catalog import RemoteVersion

remote_app = typer.Typer(help="Remotes: OCI registries (ACR, GHCR, Harbor, Quay, distribution) or OCI layout "
                         "folders that galleries are shared through.", no_args_is_help=True)
Opt = typer.Option
Arg = typer.Argument


def register(app: typer.Typer) -> None:
    from imgtool.cli import remote_settings_cmds

    remote_settings_cmds.register(remote_app)
    app.add_typer(remote_app, name="remote")
    app.command("push")(push_cmd)
    app.command("pull")(pull_cmd)
    app.command("replicate")(replicate_cmd)


@remote_app.command("add")
def remote_add(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="A name for the remote.")],
    url: Annotated[str, Arg(help="https://HOST[:PORT][/PREFIX], or oci-layout:/ABSOLUTE/PATH")],
    insecure: Annotated[bool, Opt(help="Allow plain http to a non-loopback host, and skip TLS verification.")]
    = False,
    ca_file: Annotated[str | None, Opt(help="PEM file of the CA that signed the registry's certificate.")] = None,
    sign_with: Annotated[str | None, Opt(help="Your key (imgtool key generate) that signs every version that "
                                              "reaches this remote: push, replicate, publish --replicate-to.")]
    = None,
) -> None:
    """Add a remote. http:// is accepted only for this machine's loopback addresses (or with --insecure)."""
    from imgtool.remote import remotes
    from imgtool.trust.homes import keyring, trust_store

    st = state(ctx)
    if sign_with is not None:
        keyring(st.home).load(sign_with)  # a missing or unusable key fails before the remote is added
    remote = remotes.add(st.home, name, url, insecure=insecure, ca_file=ca_file)
    if sign_with is not None:
        trust_store(st.home).set_signing_key(name, sign_with)
    if st.json:
        emit_json({**remote.describe(), "signing_key": sign_with})
        return
    print(f"added remote {name} ({remote.url})" + (f"; what reaches it is signed with key {sign_with}"
                                                   if sign_with else ""))


@remote_app.command("list")
def remote_list(ctx: typer.Context) -> None:
    """List remotes."""
    from imgtool.remote import remotes

    st = state(ctx)
    found = remotes.load_all(st.home)
    if st.json:
        emit_json([r.describe() for r in found.values()])
        return
    table(["name", "kind", "url"], [[r.name, r.kind, r.url + (" (insecure)" if r.insecure else "")]
                                    for r in found.values()])


@remote_app.command("show")
def remote_show(ctx: typer.Context, name: Annotated[str, Arg(help="Remote name.")]) -> None:
    """Show a remote and whether credentials are known for it (never the credentials)."""
    from imgtool.remote import auth, remotes

    st = state(ctx)
    remote = remotes.get(st.home, name)
    creds = auth.lookup(remote.host, st.home.root) if remote.kind == "registry" else None
    body = {**remote.describe(), "logged_in_as": creds.username if creds else None}
    if st.json:
        emit_json(body)
        return
    fields([("name", remote.name), ("kind", remote.kind), ("url", remote.url), ("insecure", remote.insecure),
            ("ca file", remote.ca_file), ("logged in as", body["logged_in_as"])])


@remote_app.command("remove")
def remote_remove(ctx: typer.Context, name: Annotated[str, Arg(help="Remote name.")]) -> None:
    """Forget a remote and imgtool's credentials for its host (unless another remote uses that host)."""
    from imgtool.flows import sharing
    from imgtool.remote import remotes

    st = state(ctx)
    remote = remotes.get(st.home, name)
    if not any(r.host == remote.host for r in remotes.load_all(st.home).values() if r.name != name):
        sharing.logout(st.home, name)
    remotes.remove(st.home, name)
    emit_json({"removed": name}) if st.json else print(f"removed remote {name}")


@remote_app.command("login")
def remote_login(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="Remote name.")],
    username: Annotated[str, Opt("--username", "-u", help="User name (or token name).")],
    password_stdin: Annotated[bool, Opt("--password-stdin", help="Read the password or token from stdin "
                                                                 "(default: ask on the terminal, not echoed).")]
    = False,
) -> None:
    """Check credentials against the registry and keep them in <home>/auth.json (mode 0600). The password is
    asked on the terminal, or read from stdin with --password-stdin; never taken on the command line."""
    from imgtool.cli.remote_settings_cmds import read_password
    from imgtool.flows import sharing
    from imgtool.remote import remotes

    st = state(ctx)
    remotes.get(st.home, name)  # a misspelled remote is said before the password is asked
    password = read_password(name, from_stdin=password_stdin)
    host = sharing.login(st.home, name, username, password)
    emit_json({"remote": name, "host": host, "username": username}) if st.json else \
        print(f"logged in to {name} ({host}) as {username}")


@remote_app.command("logout")
def remote_logout(ctx: typer.Context, name: Annotated[str, Arg(help="Remote name.")]) -> None:
    """Forget the credentials imgtool keeps for a remote."""
    from imgtool.flows import sharing

    st = state(ctx)
    removed = sharing.logout(st.home, name)
    emit_json({"remote": name, "removed": removed}) if st.json else \
        print(f"logged out of {name}" if removed else f"imgtool kept no credentials for {name}")


def _status(v: "RemoteVersion") -> str:
    words = ["revoked" if v.revoked else "", "excluded" if v.exclude_from_latest else "",
             v.check if v.check in ("pending", "failed") else ""]
    return ",".join(w for w in words if w)


@remote_app.command("sync")
def remote_sync(ctx: typer.Context, name: Annotated[str, Arg(help="Remote name.")]) -> None:
    """Learn the revocations of a remote: every local version pulled from it that a trusted key revoked there
    is marked revoked here (its VMs are flagged), and a revocation a trusted key lifted there is lifted here
    (unless revoked here later). Statements by keys not trusted are reported, not used."""
    from imgtool.flows import revoking

    st = state(ctx)
    found = revoking.sync(st.home, name)
    if st.json:
        emit_json(found)
        return
    for item in found:
        if item["revoked"]:
            vms = f"; VMs: {', '.join(item['vms'])}" if item["vms"] else ""
            print(f"{item['version']}: revoked since {item['revoked']['when']}: {item['revoked']['reason']}{vms}")
        if item.get("lifted"):
            print(f"{item['version']}: revocation lifted: {item['lifted']}")
        for why in item["ignored"]:
            print(f"{item['version']}: ignored a revocation statement: {why}")
    if not any(item["revoked"] or item.get("lifted") for item in found):
        print(f"no revocations on {name} for versions pulled from it")


def _candidate(ref: str, version: str, chosen: bool, reason: str) -> dict[str, Any]:
    """A candidate of `latest` on a remote: the same shape as version resolve's candidates, the ref with
    its remote (REMOTE:G/D@X.Y.Z)."""
    from imgtool.flows import shapes
    from imgtool.names import parse_definition_ref
    from imgtool.remote import remotes

    _, rest = remotes.split_ref(ref)
    r = parse_definition_ref(rest)
    return {**shapes.ref_parts(r.gallery, r.definition, version), "ref": f"{ref}@{version}", "latest": chosen,
            "reason": reason}


@remote_app.command("versions")
def remote_versions(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="REMOTE:GALLERY/DEFINITION")],
    explain: Annotated[bool, Opt(help="Say why latest picks what it picks.")] = False,
) -> None:
    """List a remote definition's versions and which one `latest` picks there."""
    from imgtool.flows import sharing

    st = state(ctx)
    found, chosen, verdicts, repo = sharing.versions(st.home, ref)
    latest = str(chosen) if chosen else None
    if st.json:
        emit_json({"ref": ref, "repository": repo, "latest": latest,
                   "versions": [{**{k: x for k, x in v.__dict__.items() if k != "annotations"},
                                 "latest": v.version == latest} for v in found],
                   "candidates": [_candidate(ref, str(v.version), v.chosen, v.reason) for v in verdicts]})
        return
    table(["version", "latest", "status", "published", "manifest"],
          [[v.version, "*" if v.version == latest else "", _status(v), v.published, v.manifest[:19]]
           for v in found])
    for v in found:
        if v.revoked:
            print(f"{v.version}: revoked: {v.revoked}")
    if explain:
        print(f"{ref}@latest -> {latest or 'nothing (no eligible version)'}")
        table(["version", "verdict"], [[str(v.version), v.reason] for v in verdicts])


def push_cmd(
    ctx: typer.Context,
    source: Annotated[str, Arg(help="GALLERY or GALLERY/DEFINITION (every version), GALLERY/DEFINITION@X.Y.Z, "
                                    "or GALLERY/DEFINITION@latest (the one latest picks here)")],
    remote: Annotated[str, Arg(help="Remote name.")],
    sign: Annotated[str | None, Opt("--sign", help="Sign each version pushed with this key of yours "
                                                   "(default: the remote's signing key, see imgtool trust "
                                                   "signing-key).")] = None,
    with_revocation: Annotated[bool, Opt(help="Push versions revoked here too, with their revocation: their "
                                              "record says so, and a signed statement is attached.")] = False,
) -> None:
    """Push versions (and their definition and gallery records) the remote lacks. Only chunks the remote
    does not hold travel; the tag is put last; a second push sends nothing; a killed push resumes.
    A version revoked here is refused unless --with-revocation."""
    from imgtool.flows import sharing
    from imgtool.trust.homes import keyring

    st = state(ctx)
    if sign is not None:
        keyring(st.home).load(sign)  # a missing or unusable key fails before anything moves
    bar = ProgressBar(f"pushing {source}", enabled=not st.json)
    stats: dict[str, int] = {}
    try:
        results = sharing.push_source(st.home, source, remote, sign=sign, progress=bar, stats=stats,
                                      with_revocation=with_revocation)
    finally:
        bar.close()
    if st.json:
        emit_json({"versions": [r.to_json() for r in results], "transfer": stats})
        return
    table(["version", "status", "uploaded", "packs", "mounted", "manifest"],
          [[r.name, r.status, human_bytes(r.bytes_uploaded), r.packs_uploaded, r.packs_mounted, r.manifest[:19]]
           for r in results])
    for r in results:
        if r.signed_by:
            print(f"signed {r.name} on {remote} (key {', '.join(k[:19] for k in r.signed_by)})")
        elif sign is not None:
            print(f"{r.name} was already signed on {remote} with key {sign}")


def pull_cmd(
    ctx: typer.Context,
    ref: Annotated[str, Arg(help="REMOTE:GALLERY/DEFINITION[@X.Y.Z|@latest], or pinned: "
                                 "REMOTE:G/D@X.Y.Z@sha256:… (a different digest is an error); REMOTE:GALLERY "
                                 "pulls every definition's versions")],
    as_ref: Annotated[str | None, Opt("--as", help="Store it as GALLERY/DEFINITION here.")] = None,
    all_versions: Annotated[bool, Opt("--all", help="Every version of the definition (not revoked, allowed by "
                                                    "the trust policy), not only latest; resumable.")] = False,
) -> None:
    """Pull a version: only chunks the local store lacks travel, every blob and chunk is verified, and
    nothing is named until all of it is stored. A missing gallery/definition is created from the remote's.
    With --all (or a gallery) every version comes, one by one: a rerun resumes, one failure stops none."""
    from imgtool.cli import pull_all_cmds
    from imgtool.flows import sharing

    st = state(ctx)
    if all_versions or pull_all_cmds.is_gallery(ref):
        pull_all_cmds.pull_many(st, ref, as_ref)
        return
    bar = ProgressBar(f"pulling {ref}", enabled=not st.json)
    stats: dict[str, int] = {}
    try:
        result = sharing.pull_ref(st.home, ref, as_ref=as_ref, progress=bar, stats=stats)
    finally:
        bar.close()
    warn(result.warnings)
    if st.json:
        emit_json({**result.to_json(), "transfer": stats})
        return
    if result.status == PullStatus.PRESENT:
        print(f"{result.name} is already here ({result.manifest[:19]})")
        return
    joined = f", {result.chunks_joined} from a stream on this machine" if result.chunks_joined else ""
    print(f"pulled {result.name} ({result.chunks_fetched} chunks, {human_bytes(result.bytes_received)} "
          f"received{joined}, manifest {result.manifest[:19]})")


def replicate_cmd(
    ctx: typer.Context,
    scope: Annotated[str | None, Arg(help="GALLERY, GALLERY/DEFINITION or GALLERY/DEFINITION@X.Y.Z "
                                          "(default: everything).")] = None,
) -> None:
    """Bring every replication target up to date (resumable; a failure is recorded, never fatal to others)."""
    from imgtool.flows import replication

    st = state(ctx)
    bar = ProgressBar("replicating", enabled=not st.json)
    try:
        outcomes = replication.replicate(st.home, scope, progress=bar)
    finally:
        bar.close()
    failed = [o for o in outcomes if o.state == "failed"]
    if st.json:
        emit_json([o.to_json() for o in outcomes])
    else:
        table(["version", "target", "state", "detail"],
              [[o.version, o.target, o.state, (o.manifest or "")[:19] if o.state == "completed" else o.error]
               for o in outcomes])
    if failed:
        raise typer.Exit(code=12)


def replication_rows(home: Home, gallery: str, definition: str, version: str) -> list[tuple[str, Any]]:
    """`version show` lines: one per replication target."""
    from imgtool.flows import replication

    rows: list[tuple[str, Any]] = []
    for entry in replication.describe(home, gallery, definition, version):
        detail = entry.get("state", "?")
        if detail == "replicating" and entry.get("total"):
            detail += f" {human_bytes(entry.get('progress'))} of {human_bytes(entry.get('total'))}"
        if detail == "completed":
            detail += f" {str(entry.get('manifest', ''))[:19]} at {entry.get('when')}"
        elif detail == "failed":
            detail += f": {entry.get('error')} (retry: {entry.get('retry')})"
        rows.append((f"replica {entry['target']}", detail))
    return rows


def parse_targets(text: str | None) -> list[str]:
    """`--replicate-to R1,R2` as names (the flow checks each is a known remote before any work)."""
    if not text:
        return []  # without targets, publish need not load the remote layer (~70 ms of imports)
    from imgtool.flows import replication

    return replication.parse_targets(text)


def check_targets(home: Home, text: str | None) -> list[str]:
    """`--replicate-to R1,R2`: every name must be a known remote (checked before any work)."""
    from imgtool.flows import publishing

    names = parse_targets(text)
    publishing.check_targets(home, names)
    return names


def replicate_now(home: Home, ref: str, *, add: list[str], remove: list[str], quiet: bool) -> list[dict[str, Any]]:
    """Set a version's targets and replicate it; a failed target is a warning (the version stays)."""
    if not add and not remove:
        return []
    from imgtool.flows import replication

    return report_replicas(ref, replication.retarget(home, ref, add=add, remove=remove), quiet=quiet)


def report_replicas(ref: str, outcomes: "list[Outcome]", *, quiet: bool) -> list[dict[str, Any]]:
    """Say how each replication went (a failure is a warning: the version stays); their JSON shapes."""
    for outcome in outcomes:
        if outcome.state == "failed" and not quiet:
            sys.stderr.write(f"imgtool: warning: replication of {ref} to {outcome.target} failed: "
                             f"{outcome.error}\n  hint: retry with imgtool replicate {ref}\n")
        elif not quiet:
            print(f"replicated {ref} to {outcome.target} ({(outcome.manifest or '')[:19]})")
    return [o.to_json() for o in outcomes]
