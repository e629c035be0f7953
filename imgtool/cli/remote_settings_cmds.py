"""imgtool remote update, and reading a password for remote login (from a terminal, or stdin)."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from imgtool.cli.output import emit_json, state, warn
from imgtool.errors import InvalidArgument

Opt = typer.Option
Arg = typer.Argument


def remote_update(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="Remote name.")],
    url: Annotated[str | None, Opt(help="The new https://HOST[:PORT][/PREFIX] or oci-layout:/ABSOLUTE/PATH.")] = None,
    insecure: Annotated[bool | None, Opt("--insecure/--secure", help="Allow (or stop allowing) plain http to a "
                                                                     "non-loopback host and unverified TLS.",
                                         show_default=False)] = None,
    ca_file: Annotated[str | None, Opt(help="PEM file of the CA that signed the registry's certificate.")] = None,
) -> None:
    """Point a remote elsewhere (the registry moved, its port changed, a layout folder moved), keeping its
    name, trust policy and signing key. Signatures bind the registry's host:port and repository: after a
    move to another host, port or prefix, what is there must be signed again (push --sign); a moved
    layout folder keeps its signatures. Versions already pulled keep verifying."""
    from imgtool.remote import auth, remotes

    st = state(ctx)
    if url is None and insecure is None and ca_file is None:
        raise InvalidArgument("nothing to update", hint=f"e.g. imgtool remote update {name} --url "
                                                        "https://registry.example:5000/team")
    before, after = remotes.update(st.home, name, url=url, insecure=insecure, ca_file=ca_file)
    carried = remotes.signatures_carry_over(before, after)
    notes = [] if carried else [
        f"signatures made at {before.url} bind that place and do not verify at {after.url}: sign what is there "
        f"again with imgtool push GALLERY {name} --sign KEY (versions already pulled keep verifying)"]
    if after.kind == "registry" and after.host != before.host and auth.lookup(after.host, st.home.root) is None \
            and before.kind == "registry" and auth.lookup(before.host, st.home.root) is not None:
        notes.append(f"imgtool keeps no credentials for {after.host}: imgtool remote login {name} --username U")
    if st.json:
        emit_json({**after.describe(), "previous_url": before.url, "signatures_carry_over": carried,
                   "notes": notes})
        return
    print(f"updated remote {name}: {before.url} -> {after.url}" if before.url != after.url else
          f"updated remote {name} ({after.url})")
    warn(notes)


def read_password(name: str, *, from_stdin: bool) -> str:
    """The password or token: a line of stdin with --password-stdin, else asked on the terminal without
    echo. Never from a pipe without --password-stdin (a script should say so), never from the command line."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise InvalidArgument("no password on stdin", hint="pipe the password or token into the command")
        return password
    if not sys.stdin.isatty():
        raise InvalidArgument("no terminal to ask for the password on",
                              hint=f"pipe it in: echo TOKEN | imgtool remote login {name} --username U "
                                   "--password-stdin")
    try:
        password = getpass.getpass(f"password or token for {name}: ")
    except EOFError:
        password = ""
    if not password:
        raise InvalidArgument("no password given", hint="type the password or token at the prompt")
    return password


def register(remote_app: typer.Typer) -> None:
    remote_app.command("update")(remote_update)
