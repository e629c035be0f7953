"""The web view's application: every route behind the token gate (see security.py).

Pages are rendered on the server by Jinja2 with autoescape on: every name, description, release note
and console line from the store is untrusted text and is escaped wherever it appears (attributes too).
The only script is /static/console.js, which polls a VM's console tail and sets it as text.
Handlers are plain (blocking) functions, run in Starlette's thread pool; actions are async and hand
their library call to that pool.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from imgtool.home import Home
from imgtool.vm import lifecycle
from imgtool.vm import state as vm_state
from imgtool.web import actions, api, background, child, memo, pages, security, views
from imgtool.web.render import HERE, Context, handler, not_found

DU_START_WAIT = 120.0  # seconds start-up waits for the first du count; later visits see it when done
REFRESH_EVERY = 1.0  # seconds between two looks at the home's names while serving


def _guarded(route: BaseRoute) -> BaseRoute:
    if isinstance(route, Route):
        return Route(route.path, handler(route.endpoint), methods=route.methods)
    return route


def _any_vm_runs(home: Home) -> bool:
    """Whether some VM runs: its disks and logs grow in files whose folders' stamps do not move."""
    return any(vm_state.is_running(home, name) for name in lifecycle.list_names(home))


def build(root: Path, keys: security.Secrets, *, allow_actions: bool = False,
          clock: Callable[[], float] = time.time) -> security.TokenGate:
    """The whole application, behind the token gate, with empty caches (see warm)."""
    ctx = Context(Path(root), keys, allow_actions, clock=clock)
    ctx.du = background.Refreshing(lambda: child.du(ctx.root), key=lambda: memo.store_key(ctx.home()),
                                   ages=lambda: _any_vm_runs(ctx.home()), clock=clock)
    routes = [*pages.routes(), *api.routes(), *actions.routes(),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    app = Starlette(routes=[_guarded(r) for r in routes], exception_handlers={404: not_found})
    app.state.ctx = ctx
    return security.TokenGate(app, keys)


def warm(gate: security.TokenGate) -> None:
    """Fill the caches the first visits would fill, and count `du` (in a child process, meanwhile): run
    before the server says where it is, so that no first request waits for them. Errors are left to
    the requests, which compute whatever is missing and report what fails."""
    ctx: Context = cast(Starlette, gate.app).state.ctx
    assert ctx.du is not None
    ctx.du.get()
    with contextlib.suppress(Exception):  # only a head start: the page that needs it says what failed
        views.warm(ctx.home(), ctx.caches)
    ctx.du.wait(DU_START_WAIT)
    _freeze()


def _freeze() -> None:
    """Move what the caches hold out of the cycle collector's sight: at 10,000 versions they are about
    100,000 objects, and a full collection walking them took 90 to 190 ms in the middle of some request.
    They are freed as usual (by reference counts) when a memo drops them."""
    gc.collect()
    gc.freeze()


def refresh(gate: security.TokenGate, warmed: memo.Key | None) -> memo.Key | None:
    """One look at the home while serving: when its names changed since `warmed` (a publish, a capture,
    a new VM) and are settled (not racy), fill the caches again now and start a new du count, so that
    the next visit does not pay for the change. Returns the names' state the caches are warm for."""
    ctx: Context = cast(Starlette, gate.app).state.ctx
    assert ctx.du is not None
    home = ctx.home()
    now = memo.home_key(home)
    if now is None or now == warmed:
        return warmed
    ctx.du.get()  # counts in its child process meanwhile, if the change moved what du counts
    with contextlib.suppress(Exception):  # as at start-up: a request reports what fails
        views.warm(home, ctx.caches)
    _freeze()
    return now


def keep_warm(gate: security.TokenGate, stop: threading.Event) -> threading.Thread:
    """refresh() every REFRESH_EVERY seconds in a daemon thread until `stop` is set (the server stops)."""
    def loop() -> None:
        try:  # what warm() just read; None (a home that had just changed) makes the first look read again
            warmed = memo.home_key(cast(Starlette, gate.app).state.ctx.home())
        except OSError:
            warmed = None
        while not stop.wait(REFRESH_EVERY):
            try:
                warmed = refresh(gate, warmed)
            except OSError:  # a folder went away while it was read: look again next time
                continue

    thread = threading.Thread(target=loop, name="imgtool-serve-refresh", daemon=True)
    thread.start()
    return thread
