"""imgtool serve"""

import contextlib
import json
import os
import sys
import time
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

    Reads what the pages show first (seconds on a big home), then prints a link with a random token;
    without it every page answers 403. With --json that is one JSON line instead: url (with the token),
    base_url, host, port, pid, startup_ms. /api/... answers the same JSON documents as the --json
    commands. Ctrl-C stops it."""
    from imgtool.web import security, server

    st = state(ctx)
    started = time.monotonic()
    wanted = server.parse_listen(listen, port)
    if not wanted.loopback:
        warn([f"listening on {wanted.host}, not only this machine's loopback: anyone who can reach it and gets "
              "the link can see the gallery" + (" and act on it" if allow_actions else "")])
    sock, bound = server.bind(wanted)
    keys = security.Secrets()
    try:
        app = server.prepare(st.home.root, keys, allow_actions=allow_actions)
    except BaseException:
        sock.close()
        raise
    startup_ms = round((time.monotonic() - started) * 1000)
    url = bound.url(keys.token)
    if st.json:  # one line, now: the document a script waits for (nothing more is printed at exit)
        print(json.dumps({"url": url, "base_url": bound.base, "host": bound.host, "port": bound.port,
                          "pid": os.getpid(), "startup_ms": startup_ms}, sort_keys=True), flush=True)
    else:
        print(f"imgtool serve: {url}", flush=True)
        sys.stderr.write(f"  ready in {startup_ms / 1000:.1f} s; the link carries an access token; "
                         "Ctrl-C stops the server\n")
    if open_browser:
        _open(url)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        server.serve(app, sock)


def _open(url: str) -> None:
    from imgtool.errors import ImgtoolError
    from imgtool.tools import run

    try:
        run.spawn(["xdg-open", url])
    except ImgtoolError as exc:
        warn([f"could not open a browser: {exc.message}; open the link yourself"])
