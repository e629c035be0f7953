"""imgtool serve"""

import contextlib
import sys
from typing import Annotated

import typer

from imgtool.cli.output import state, warn


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    ctx: typer.Context,
    port: Annotated[int, typer.Option(help="TCP port (0: any free port).")] = 8470,
    listen: Annotated[str | None, typer.Option(help="Listen on this IP address instead of 127.0.0.1 (anyone "
                                                    "who can reach it and has the link sees the gallery).")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in your browser.")] = False,
    allow_actions: Annotated[bool, typer.Option(help="Offer actions: start/stop a VM, promote, revoke.")] = False,
) -> None:
    """A local web view of the gallery: galleries, definitions and versions (latest and why, checks,
    revocations, signatures, audits, replication), lineage, sharing, remotes and trust, VMs with a live
    console, store totals. Read-only unless --allow-actions.

    Prints a link with a random token; without it every page answers 403. /api/... answers the same
    JSON documents as the --json commands. Ctrl-C stops it."""
    from imgtool.web import security, server

    st = state(ctx)
    wanted = server.parse_listen(listen, port)
    if not wanted.loopback:
        warn([f"listening on {wanted.host}, not only this machine's loopback: anyone who can reach it and gets "
              "the link can see the gallery" + (" and act on it" if allow_actions else "")])
    sock, bound = server.bind(wanted)
    keys = security.Secrets()
    url = bound.url(keys.token)
    print(f"imgtool serve: {url}", flush=True)
    sys.stderr.write("  the link carries an access token; Ctrl-C stops the server\n")
    if open_browser:
        _open(url)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        server.serve(st.home.root, sock, keys, allow_actions=allow_actions)


def _open(url: str) -> None:
    from imgtool.errors import ImgtoolError
    from imgtool.tools import run

    try:
        run.spawn(["xdg-open", url])
    except ImgtoolError as exc:
        warn([f"could not open a browser: {exc.message}; open the link yourself"])
