"""Actions, only with `imgtool serve --allow-actions`: start and stop a VM, promote and revoke a version.

Each is a POST from a form of this server carrying the CSRF token, and calls the same library function
the CLI command calls (vm start, vm stop, version update --promote, version revoke). Without
--allow-actions every action answers 403 and the pages show no buttons.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from imgtool.errors import InvalidArgument
from imgtool.gallery import revocation
from imgtool.vm import checks, runtime
from imgtool.vm.record import load
from imgtool.web.render import Context, version_ref

MAX_FORM = 8 << 10


async def _form(request: Request) -> dict[str, str] | Response:
    """The posted form, or the 403 that refuses it (actions off, wrong CSRF token, foreign origin)."""
    ctx: Context = request.app.state.ctx
    if not ctx.allow_actions:
        return PlainTextResponse("403: actions are off; start imgtool serve --allow-actions\n", 403)
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return PlainTextResponse("403: a form from another origin\n", 403)
    body = b""
    async for piece in request.stream():
        body += piece
        if len(body) > MAX_FORM:
            return PlainTextResponse("413: form too large\n", 413)
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    if not ctx.keys.csrf_ok(form.get("csrf")):
        return PlainTextResponse("403: missing or wrong CSRF token; reload the page and try again\n", 403)
    return form


def _then(path: str) -> Response:
    return RedirectResponse(path, status_code=303)


async def vm_start(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form


    ctx: Context = request.app.state.ctx
    name = request.path_params["name"]
    await run_in_threadpool(runtime.start, ctx.home(), name)  # vm start's call (it loads the record first)
    return _then(f"/vms/{name}")


async def vm_stop(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form


    ctx: Context = request.app.state.ctx
    name = request.path_params["name"]
    home = ctx.home()
    await run_in_threadpool(load, home, name)  # as vm stop does: a VM that does not exist is NotFound
    await run_in_threadpool(runtime.stop_detail, home, name, timeout=30.0)
    return _then(f"/vms/{name}")


async def promote(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form


    ctx: Context = request.app.state.ctx
    await run_in_threadpool(checks.promote, ctx.home(), version_ref(request))
    return _then(_version_path(request))


async def revoke(request: Request) -> Response:
    form = await _form(request)
    if isinstance(form, Response):
        return form


    reason = form.get("reason", "").strip()
    if not reason:
        raise InvalidArgument("a revocation needs a reason", hint="say why, e.g. CVE-2026-1234 in openssl")
    ctx: Context = request.app.state.ctx
    await run_in_threadpool(revocation.revoke, ctx.home(), version_ref(request), reason)
    return _then(_version_path(request))


def _version_path(request: Request) -> str:
    p = request.path_params
    return f"/versions/{p['gallery']}/{p['definition']}/{p['version']}"


def routes() -> list[Route]:
    v = "/actions/versions/{gallery}/{definition}/{version}"
    return [
        Route("/actions/vms/{name}/start", vm_start, methods=["POST"]),
        Route("/actions/vms/{name}/stop", vm_stop, methods=["POST"]),
        Route(f"{v}/promote", promote, methods=["POST"]),
        Route(f"{v}/revoke", revoke, methods=["POST"]),
    ]
