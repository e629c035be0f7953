"""`/api/...`: the `--json` documents of the read-only commands, exactly (see documents.py).

    /api/galleries                                  imgtool gallery list --json
    /api/galleries/G                                imgtool gallery show G --json
    /api/galleries/G/definitions                    imgtool definition list G --json
    /api/definitions/G/D                            imgtool definition show G/D --json
    /api/definitions/G/D/versions                   imgtool version list G/D --json
    /api/definitions/G/D/resolve                    imgtool version resolve G/D --json
    /api/versions/G/D/X.Y.Z                         imgtool version show G/D@X.Y.Z --json
    /api/versions/G/D/X.Y.Z/users                   imgtool version users G/D@X.Y.Z --json
    /api/vms                                        imgtool vm list --json
    /api/vms/NAME                                   imgtool vm show NAME --json
    /api/remotes                                    imgtool remote list --json
    /api/trust                                      imgtool trust list --json
    /api/du                                         imgtool du --json (counted in a child process)

/api/du answers the last count while it is current (the home's state unchanged, and at most 30 s old
while a VM runs: see background.py), else counts now; its `Age` header says how many seconds ago it
was counted. There is also one that no command prints: /api/vms/NAME/console, {"name", "state",
"lines", "hydration"} (the console tail, and the state and hydration as vm show --json has them, that
the VM page polls).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imgtool.errors import ImgtoolError, ToolFailed
from imgtool.home import Home
from imgtool.vm import runtime
from imgtool.web import child, documents, views
from imgtool.web.render import Context, definition_ref, version_ref


def _json(read: Callable[[Home, Request], Any]) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        ctx: Context = request.app.state.ctx
        return JSONResponse(read(ctx.home(), request))

    return endpoint


def _cached(read: Callable[[Home, Request, views.Caches], Any]) -> Callable[[Request], Response]:
    """An endpoint whose document is built through the server's caches (views.py: same documents)."""

    def endpoint(request: Request) -> Response:
        ctx: Context = request.app.state.ctx
        return JSONResponse(read(ctx.home(), request, ctx.caches))

    return endpoint


def _encoded(resolve: bool) -> Callable[[Request], Response]:
    def endpoint(request: Request) -> Response:
        ctx: Context = request.app.state.ctx
        body = views.encoded(ctx.home(), definition_ref(request), ctx.caches, resolve=resolve)
        return Response(body, media_type="application/json")

    return endpoint


def _du(request: Request) -> Response:
    ctx: Context = request.app.state.ctx
    assert ctx.du is not None
    snapshot = ctx.du.fresh(child.DU_TIMEOUT)
    if isinstance(snapshot.failure, ImgtoolError):
        raise snapshot.failure
    if snapshot.failure is not None or snapshot.value is None or snapshot.computed_at is None:
        raise ToolFailed(f"imgtool du did not give a count ({snapshot.error or 'still counting'})",
                         hint="run imgtool du --debug to see why")
    age = max(0, int(ctx.clock() - snapshot.computed_at))
    value = snapshot.value  # one count is sent many times: encoded once (10,000 rows take tens of ms)
    # The entry keeps the count alive, so no other count can have its id while the entry exists.
    _kept, body = ctx.caches.memo.get("du json", (snapshot.computed_at, id(value)), lambda: (value, json.dumps(
        value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()))
    return Response(body, media_type="application/json", headers={"Age": str(age)})


def _console(home: Home, request: Request) -> dict[str, Any]:

    name = request.path_params["name"]
    lines = views.console_tail(home, name)
    status = runtime.status(home, name)
    return {"name": name, "state": status["state"], "lines": lines, "hydration": status.get("hydration")}


def routes() -> list[Route]:
    g = "{gallery}"
    d = f"{g}/{{definition}}"
    v = f"{d}/{{version}}"
    return [
        Route("/api/galleries", _json(lambda h, r: documents.gallery_list(h))),
        Route(f"/api/galleries/{g}", _json(lambda h, r: documents.gallery_show(h, r.path_params["gallery"]))),
        Route(f"/api/galleries/{g}/definitions",
              _json(lambda h, r: documents.definition_list(h, r.path_params["gallery"]))),
        Route(f"/api/definitions/{d}", _json(lambda h, r: documents.definition_show(h, definition_ref(r)))),
        Route(f"/api/definitions/{d}/versions", _encoded(resolve=False)),
        Route(f"/api/definitions/{d}/resolve", _encoded(resolve=True)),
        Route(f"/api/versions/{v}", _cached(lambda h, r, c: views.version_show(h, version_ref(r), c))),
        Route(f"/api/versions/{v}/users", _cached(lambda h, r, c: views.version_users(h, version_ref(r), c))),
        Route("/api/vms", _json(lambda h, r: documents.vm_list(h))),
        Route("/api/vms/{name}", _json(lambda h, r: documents.vm_show(h, r.path_params["name"]))),
        Route("/api/vms/{name}/console", _json(_console)),
        Route("/api/remotes", _json(lambda h, r: documents.remote_list(h))),
        Route("/api/trust", _json(lambda h, r: documents.trust_list(h))),
        Route("/api/du", _du),
    ]
