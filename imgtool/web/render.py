"""What every handler shares: the request context, the templates, the request's refs, and how errors become answers.

Pages are rendered on the server by Jinja2 with autoescape on: every name, description, release note
and console line from the store is untrusted text and is escaped wherever it appears (attributes too).
The only script is /static/console.js, which polls a VM's console tail and sets it as text.
Handlers are plain (blocking) functions; Starlette runs them in its thread pool.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from imgtool.errors import ImgtoolError, InvalidArgument, NotFound
from imgtool.flows.shapes import error as error_json
from imgtool.flows.shapes import human_bytes
from imgtool.home import Home
from imgtool.web import background, security
from imgtool.web.views import Caches

HERE = Path(__file__).parent
STATUS = {"not-found": 404, "invalid-argument": 400, "already-exists": 409, "refused": 409, "locked": 423}


@dataclass
class Context:
    """What every handler needs: the home's folder (a fresh Home per request sees every change), the
    secrets, whether actions are allowed, and the memos that survive between requests."""

    root: Path
    keys: security.Secrets
    allow_actions: bool = False
    caches: Caches = field(default_factory=Caches)
    du: background.Refreshing | None = None
    clock: Callable[[], float] = time.time

    def home(self) -> Home:
        return Home.at(self.root)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["bytes"] = human_bytes
    env.filters["json"] = lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False)
    env.filters["short"] = lambda digest: digest and (str(digest)[:19] + "…")
    return env


TEMPLATES = environment()


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    ctx: Context = request.app.state.ctx
    page = TEMPLATES.get_template(name).render(
        csrf=ctx.keys.csrf, allow_actions=ctx.allow_actions, path=request.url.path, **values)
    return HTMLResponse(page, status_code=status)


def error_page(request: Request, exc: ImgtoolError) -> Response:
    status = STATUS.get(exc.category, 500)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": error_json(exc)}, status_code=status)
    return render(request, "error.html", status, error=error_json(exc))


def handler(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    """Library errors become 4xx/5xx answers with the message and hint (never a traceback)."""
    if inspect.iscoroutinefunction(fn):
        async def run_async(request: Request) -> Response:
            try:
                response: Response = await fn(request)
                return response
            except ImgtoolError as exc:
                return error_page(request, exc)

        return run_async

    def run(request: Request) -> Response:
        try:
            response: Response = fn(request)
            return response
        except ImgtoolError as exc:
            return error_page(request, exc)

    return run


def page_number(request: Request) -> int:
    text = request.query_params.get("page", "1")
    if not text.isdigit() or len(text) > 6:
        raise InvalidArgument(f"page '{text[:20]}' is not a page number", hint="use ?page=1, ?page=2, ...")
    return int(text)


def version_ref(request: Request) -> str:
    p = request.path_params
    return f"{p['gallery']}/{p['definition']}@{p['version']}"


def definition_ref(request: Request) -> str:
    p = request.path_params
    return f"{p['gallery']}/{p['definition']}"


def not_found(request: Request, exc: Exception) -> Response:
    return error_page(request, NotFound(f"nothing at {request.url.path[:200]}", hint="start from the galleries"))
