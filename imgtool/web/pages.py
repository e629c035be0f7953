"""The HTML pages (read-only). Each one reads through imgtool/web/documents.py and views.py."""

from __future__ import annotations

import heapq
from operator import itemgetter

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from imgtool.web import documents, lineage, views
from imgtool.web.render import Context, definition_ref, page_number, render, version_ref

TOP = 50  # versions the store page lists, by bytes only they hold (all of them: /api/du)


def ctx_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def galleries(request: Request) -> Response:
    home = ctx_of(request).home()
    found = [documents.gallery_show(home, g["name"]) for g in documents.gallery_list(home)]
    return render(request, "galleries.html", galleries=found)


def gallery(request: Request) -> Response:
    home = ctx_of(request).home()
    name = request.path_params["gallery"]
    return render(request, "gallery.html", gallery=documents.gallery_show(home, name),
                  definitions=documents.definition_list(home, name))


def definition(request: Request) -> Response:
    home = ctx_of(request).home()
    return render(request, "definition.html", **views.definition_page(
        home, definition_ref(request), page_number(request), ctx_of(request).caches))


def version(request: Request) -> Response:
    ctx = ctx_of(request)
    return render(request, "version.html", **views.version_page(ctx.home(), version_ref(request), ctx.caches))


def sharing(request: Request) -> Response:
    ctx = ctx_of(request)
    return render(request, "sharing.html", **views.sharing_page(ctx.home(), definition_ref(request),
                                                                page_number(request), ctx.caches))


def lineage_page(request: Request) -> Response:
    ctx = ctx_of(request)
    graph = views.lineage_graph(ctx.home(), ctx.caches)
    return render(request, "lineage.html", graph=graph, paths=graph.edge_paths(), sizes=lineage)


def remotes(request: Request) -> Response:
    home = ctx_of(request).home()
    return render(request, "remotes.html", remotes=documents.remote_list(home), trust=documents.trust_list(home))


def vms(request: Request) -> Response:
    return render(request, "vms.html", vms=documents.vm_list(ctx_of(request).home()))


def vm(request: Request) -> Response:
    home = ctx_of(request).home()
    name = request.path_params["name"]
    return render(request, "vm.html", vm=documents.vm_show(home, name), console=views.console_tail(home, name))


def store(request: Request) -> Response:
    ctx = ctx_of(request)
    assert ctx.du is not None
    snapshot = ctx.du.get()
    age = None if snapshot.computed_at is None else max(0, int(ctx.clock() - snapshot.computed_at))
    top = heapq.nlargest(TOP, snapshot.value["versions"], key=itemgetter("unique_bytes")) if snapshot.value else []
    return render(request, "store.html", du=snapshot.value, top=top, age=age, computing=snapshot.computing,
                  failed=snapshot.error)


def routes() -> list[Route]:
    return [
        Route("/", galleries),
        Route("/galleries/{gallery}", gallery),
        Route("/definitions/{gallery}/{definition}", definition),
        Route("/definitions/{gallery}/{definition}/sharing", sharing),
        Route("/versions/{gallery}/{definition}/{version}", version),
        Route("/lineage", lineage_page),
        Route("/remotes", remotes),
        Route("/vms", vms),
        Route("/vms/{name}", vm),
        Route("/store", store),
    ]
