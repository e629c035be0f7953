"""The web view's application: every route behind the token gate (see security.py).

Pages are rendered on the server by Jinja2 with autoescape on: every name, description, release note
and console line from the store is untrusted text and is escaped wherever it appears (attributes too).
The only script is /static/console.js, which polls a VM's console tail and sets it as text.
Handlers are plain (blocking) functions, run in Starlette's thread pool; actions are async and hand
their library call to that pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from imgtool.web import actions, api, background, documents, pages, security
from imgtool.web.render import HERE, Context, handler, not_found


def _guarded(route: BaseRoute) -> BaseRoute:
    if isinstance(route, Route):
        return Route(route.path, handler(route.endpoint), methods=route.methods)
    return route


def build(root: Path, keys: security.Secrets, *, allow_actions: bool = False,
          clock: Callable[[], float] = time.time) -> security.TokenGate:
    """The whole application, behind the token gate."""
    ctx = Context(Path(root), keys, allow_actions, clock=clock)
    ctx.du = background.Refreshing(lambda: documents.du(ctx.home()), clock=clock)
    routes = [*pages.routes(), *api.routes(), *actions.routes(),
              Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]
    app = Starlette(routes=[_guarded(r) for r in routes], exception_handlers={404: not_found})
    app.state.ctx = ctx
    return security.TokenGate(app, keys)
