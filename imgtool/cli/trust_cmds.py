"""imgtool key … (signing keys) and imgtool trust … (whose signatures a remote's versions need)."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import emit_json, state, table
from imgtool.flows import shapes

if TYPE_CHECKING:
    from imgtool.home import Home

key_app = typer.Typer(help="Signing keys (ed25519) for the versions you push.", no_args_is_help=True)
trust_app = typer.Typer(help="Trusted publishers per remote: pulls from a remote with trusted keys accept only "
                        "versions signed by them.", no_args_is_help=True)

Opt = typer.Option


def register(app: typer.Typer) -> None:
    from imgtool.cli import key_files_cmds
    from imgtool.cli.version_cmds import version_app

    key_files_cmds.register(key_app)
    app.add_typer(key_app, name="key")
    app.add_typer(trust_app, name="trust")
    version_app.command("verify")(version_verify)


def version_verify(ctx: typer.Context, ref: Annotated[str, typer.Argument(help="GALLERY/DEFINITION@X.Y.Z")],
                   quick: Annotated[bool, Opt(help="Check that chunks are present without re-hashing "
                                                   "them.")] = False) -> None:
    """Re-check a pulled version offline: its stored signatures against the keys its remote trusts now,
    the manifest and config they sign against the local record, and every chunk (BLAKE3)."""
    from imgtool.cli.output import warn
    from imgtool.errors import Refused
    from imgtool.flows.signing import verify_local
    from imgtool.names import ref_fields

    st = state(ctx)
    verdict = verify_local(st.home, ref, deep=not quick)
    if verdict is None:
        raise Refused(f"{ref} was not pulled from a remote: there is no publisher signature to check",
                      hint="imgtool verify --deep checks the store's content")
    warn(verdict.acceptance.warnings)
    if st.json:
        emit_json({**ref_fields(verdict.name), "remote": verdict.remote, "manifest": verdict.manifest_digest,
                   "policy": verdict.acceptance.policy, "verified_by": list(verdict.acceptance.verified_by)})
        return
    if verdict.acceptance.verified_by:
        print(f"{verdict.name}: verified (manifest {verdict.manifest_digest[:19]}…, signed by "
              + ", ".join(k[:23] + "…" for k in verdict.acceptance.verified_by) + f", trusted on {verdict.remote})")
    else:
        print(f"{verdict.name}: content intact; not verified (remote {verdict.remote} has policy any)")


@key_app.command("generate")
def key_generate(ctx: typer.Context, name: str,
                 expires: Annotated[str | None, Opt(help="Expiry date (YYYY-MM-DD, UTC); verifiers refuse "
                                                         "the key's signatures after it.")] = None) -> None:
    """Create an ed25519 signing key under the home (private key 0600, never printed)."""
    from imgtool.clock import parse_time
    from imgtool.trust.homes import keyring

    st = state(ctx)
    public = keyring(st.home).generate(name, expires=parse_time(expires, "--expires") if expires else None)
    if st.json:
        emit_json({"name": name, "key_id": public.key_id, "expires": expires})
        return
    print(f"created key {name} ({public.key_id})")
    print(f"give your users its public key: imgtool key export {name} > {name}.pub")


@key_app.command("list")
def key_list(ctx: typer.Context) -> None:
    """List your signing keys."""
    from imgtool.clock import stamp
    from imgtool.trust.homes import keyring

    st = state(ctx)
    ring = keyring(st.home)
    keys = [ring.load(name) for name in ring.names()]
    rows: list[dict[str, Any]] = [
        {"name": k.name, "key_id": k.public.key_id, "created": stamp(k.created),
         "expires": stamp(k.public.expires) if k.public.expires else None} for k in keys]
    if st.json:
        emit_json(rows)
        return
    table(["name", "key id", "created", "expires"],
          [[r["name"], r["key_id"][:23] + "…", r["created"][:10], (r["expires"] or "-")[:10]] for r in rows])


@key_app.command("export")
def key_export(ctx: typer.Context, name: str,
               output: Annotated[Path | None, Opt("--output", "-o", help="Write to this file.")] = None) -> None:
    """Print the public key of NAME (a PEM block with its id and expiry), for `imgtool trust add`."""
    from imgtool.trust.homes import keyring

    st = state(ctx)
    public = keyring(st.home).public(name)
    if output is not None:
        output.write_text(public.file_text())
    if st.json:
        emit_json({"name": name, "key_id": public.key_id, "public_key": public.file_text()})
    elif output is None:
        print(public.file_text(), end="")


@trust_app.command("add")
def trust_add(ctx: typer.Context, remote: str, key_file: Path,
              gallery: Annotated[str | None, Opt(help="Trust the key only for this gallery's versions.")] = None,
              expires: Annotated[str | None, Opt(help="Stop trusting the key after this date (YYYY-MM-DD, "
                                                      "UTC); overrides the expiry in the file.")] = None) -> None:
    """Trust KEY_FILE's signatures on REMOTE; the remote's policy becomes `signed`."""
    from imgtool.clock import parse_time
    from imgtool.errors import NotFound
    from imgtool.trust.homes import trust_store
    from imgtool.trust.keys import MAX_PUBLIC_KEY_FILE, parse_public_key

    st = state(ctx)
    _existing_remote(st.home, remote)
    if not key_file.is_file():
        raise NotFound(f"no file {key_file}", hint="the publisher makes it with imgtool key export NAME")
    with key_file.open("rb") as handle:
        data = handle.read(MAX_PUBLIC_KEY_FILE + 1).decode("utf-8", errors="replace")
    key = parse_public_key(data, str(key_file))
    entry = trust_store(st.home).add(remote, key, gallery=gallery,
                                     expires=parse_time(expires, "--expires") if expires else None)
    if st.json:
        emit_json(shapes.trusted_key(remote, entry))
        return
    scope = f"gallery {gallery} on {remote}" if gallery else remote
    print(f"trusting key {entry.key_id} for {scope}; versions from {remote} must now be signed")


@trust_app.command("list")
def trust_list(ctx: typer.Context, remote: Annotated[str | None, typer.Argument()] = None) -> None:
    """Show each remote's policy and trusted keys."""
    from imgtool.trust.homes import trust_store

    st = state(ctx)
    store = trust_store(st.home)
    remotes = [store.remote(remote)] if remote else list(store.remotes().values())
    if st.json:
        emit_json([{"remote": rt.remote, "policy": rt.policy, "signing_key": rt.signing_key,
                    "keys": [shapes.trusted_key(rt.remote, k) for k in rt.keys]} for rt in remotes])
        return
    rows = []
    for rt in remotes:
        rows += [[rt.remote, rt.policy, "-", "-", "-"]] if not rt.keys else [
            [rt.remote, rt.policy, k.key_id[:23] + "…", k.gallery or "(all)",
             k.key.expires.strftime("%Y-%m-%d") if k.key.expires else "-"] for k in rt.keys]
    table(["remote", "policy", "key id", "gallery", "expires"], rows)
    for rt in remotes:
        if rt.signing_key:
            print(f"pushes to {rt.remote} are signed with your key {rt.signing_key}")


@trust_app.command("remove")
def trust_remove(ctx: typer.Context, remote: str,
                 key_id: Annotated[str | None, typer.Argument(help="A key id or its prefix; all keys when "
                                                               "omitted.")] = None,
                 gallery: Annotated[str | None, Opt(help="Only the keys trusted for this gallery.")] = None) -> None:
    """Stop trusting keys on REMOTE (without keys and without `any`, the remote is refused)."""
    from imgtool.trust.homes import trust_store

    st = state(ctx)
    gone = trust_store(st.home).remove(remote, key_id, gallery=gallery)
    if st.json:
        emit_json({"remote": remote, "removed": [k.key_id for k in gone]})
        return
    for k in gone:
        print(f"no longer trusting {k.key_id} on {remote}" + (f" for gallery {k.gallery}" if k.gallery else ""))
    if not gone:
        print(f"{remote}: policy 'any' removed; the remote is refused until it has a policy")


@trust_app.command("policy")
def trust_policy(ctx: typer.Context, remote: str,
                 policy: Annotated[str, typer.Argument(help="signed (needs trusted keys) or any (accept "
                                                            "unsigned versions, with a warning on each use)")],
                 ) -> None:
    """Set REMOTE's policy explicitly."""
    from imgtool.trust.homes import trust_store

    st = state(ctx)
    _existing_remote(st.home, remote)
    rt = trust_store(st.home).set_policy(remote, policy)
    if st.json:
        emit_json({"remote": remote, "policy": rt.policy})
        return
    print(f"{remote}: policy {rt.policy}")


def _existing_remote(home: "Home", name: str) -> None:
    """Trust is set for a remote that exists: a misspelled name would otherwise be trusted, silently, and
    the real remote left as it was."""
    from imgtool.remote import remotes

    remotes.get(home, name)


@trust_app.command("signing-key")
def trust_signing_key(ctx: typer.Context, remote: str,
                      key: Annotated[str | None, typer.Argument(help="One of your keys (imgtool key list).")] = None,
                      none: Annotated[bool, Opt("--none", help="Stop signing pushes to REMOTE by "
                                                               "default.")] = False) -> None:
    """Sign every version pushed (or replicated) to REMOTE with KEY, without --sign."""
    from imgtool.errors import InvalidArgument
    from imgtool.trust.homes import keyring, trust_store

    st = state(ctx)
    if (key is None) == (not none):
        raise InvalidArgument("give a key name or --none", hint=f"imgtool trust signing-key {remote} KEY")
    _existing_remote(st.home, remote)
    if key is not None:
        keyring(st.home).load(key)
    rt = trust_store(st.home).set_signing_key(remote, key)
    if st.json:
        emit_json({"remote": remote, "signing_key": rt.signing_key})
        return
    print(f"pushes to {remote} are signed with {key}" if key else f"pushes to {remote} are not signed by default")
