"""The web view's application: every route behind the token gate (see security.py).

Pages are rendered on the server by Jinja2 with autoescape on: every name, description, release note
and console line from the store is untrusted text and is escaped wherever it appears (attributes too).
The only script is /static/console.js, which polls a VM's console tail and sets it as text.
Handlers are plain (blocking) functions, run in Starlette's thread pool; actions are async and hand
their library call to that pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from imgtool.web import actions, api, background, child, pages, security, views
from imgtool.web.render import HERE, Context, handler, not_found


def _warm(ctx: Context) -> None:
    with contextlib.suppress(Exception):  # only a head start: a request computes whatever is missing
        views.warm(ctx.home(), ctx.caches)


def _guarded(route: BaseRoute) -> BaseRoute:
    if isinstance(route, Route):
        return Route(route.path, handler(route.endpoint), methods=route.methods)
    return route


def build(root: Path, keys: security.Secrets, *, allow_actions: bool = False, warm: bool = False,
          clock: Callable[[], float] = time.time) -> security.TokenGate:
    """The whole application, behind the token gate. warm: fill the caches and start counting `du` in the
    background now, so that the first visits do not wait for them."""
    ctx = Context(Path(root), keys, allow_actions, clock=clock)
    ctx.du = background.Refreshing(lambda: child.du(ctx.root), clock=clock)
    routes = [*pages.routes(), *api.routes(), *actions.routes(),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    app = Starlette(routes=[_guarded(r) for r in routes], exception_handlers={404: not_found})
    app.state.ctx = ctx
    if warm:
        ctx.du.get()
        threading.Thread(target=_warm, args=(ctx,), name="imgtool-serve-warm", daemon=True).start()
    return security.TokenGate(app, keys)
