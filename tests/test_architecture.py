"""The import rules of docs/DESIGN.md, checked on the source (an AST walk; nothing is imported).

- `store` is generic: it imports nothing from `imgtool`.
- Only `imgtool/cli/` imports typer and writes to the terminal (print, sys.stdout/stderr).
- Only the subprocess seam (`imgtool/tools/run.py`) imports `sh`; only the network edge imports httpx.
- Pure modules (names, records, version numbers and `latest`, the gallery model, argv builders, the
  vocabularies, `formats/`) import only other pure modules and side-effect-free standard modules.
- The layers, bottom to top (LAYERS below): each module imports only its own layer and lower ones;
  peers (trust and remote; the flows; the front ends) do not import each other; the few exceptions are
  listed with their reasons, and a stale one fails the test.
- Publishing a version does not pull in the VM runtime (QEMU, QMP, the accelerator probe).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("imgtool", "store")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # what it imports, dotted (from-imports of names give "pkg.mod.name" candidates too)
    top_level: bool  # at module level (runs on import), not inside a function
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _walk(node: ast.AST, top: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every node, with whether it runs on import (not inside a function, nor under `if TYPE_CHECKING`)."""
    for child in ast.iter_child_nodes(node):
        inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) \
            and not _type_checking_only(child)
        yield child, inner
        yield from _walk(child, inner)


def imports_of(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node, top in _walk(tree, True):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, top, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.append(Import(module, base, top, node.lineno))
            found += [Import(module, f"{base}.{alias.name}", top, node.lineno) for alias in node.names]
    return found


ALL = sources()
IMPORTS = {name: imports_of(name, path) for name, path in ALL.items()}


def targets(module: str, *, top_only: bool = False) -> set[str]:
    return {i.target for i in IMPORTS[module] if i.top_level or not top_only}


def uses(module: str, package: str) -> list[str]:
    return sorted(t for t in targets(module) if t == package or t.startswith(package + "."))


def test_the_walk_finds_the_tree() -> None:
    assert "store.repo" in ALL and "imgtool.cli.main" in ALL and "imgtool.gallery.image_versions" in ALL
    assert "typer" in targets("imgtool.cli.main")  # the walk sees what is there


@pytest.mark.parametrize("module", sorted(m for m in ALL if m.startswith("store")))
def test_store_imports_nothing_from_imgtool(module: str) -> None:
    assert uses(module, "imgtool") == []


@pytest.mark.parametrize("module", sorted(m for m in ALL if not m.startswith("imgtool.cli")))
def test_only_the_cli_imports_typer(module: str) -> None:
    assert uses(module, "typer") == [] and uses(module, "click") == []


def _is_terminal_write(node: ast.Call) -> bool:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id in ("print", "input", "breakpoint")
    stream = func.value if isinstance(func, ast.Attribute) and func.attr in ("write", "writelines") else None
    return isinstance(stream, ast.Attribute) and stream.attr in ("stdout", "stderr") and \
        isinstance(stream.value, ast.Name) and stream.value.id == "sys"


def _writes_to_terminal(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and _is_terminal_write(node)]


@pytest.mark.parametrize("module", sorted(m for m in ALL if not m.startswith("imgtool.cli")))
def test_only_the_cli_prints(module: str) -> None:
    assert _writes_to_terminal(ALL[module]) == [], "the library raises and returns; only imgtool/cli speaks"


SUBPROCESS_SEAM = "imgtool.tools.run"
NETWORK_EDGE = "imgtool.remote.registry"  # the one HTTP client module: tests may replace only it


@pytest.mark.parametrize("module", sorted(ALL))
def test_only_the_seams_reach_processes_and_the_network(module: str) -> None:
    if module != SUBPROCESS_SEAM:
        assert uses(module, "sh") == [], "every external program goes through imgtool/tools/run.py"
        assert uses(module, "subprocess") == []
    if module != NETWORK_EDGE:
        assert uses(module, "httpx") == [], "HTTP goes through the remote layer's one client module"


# Pure: rules and records, importable anywhere without side effects.
PURE = {"imgtool.errors", "imgtool.clock", "imgtool.names", "imgtool.records", "imgtool.vocab", "imgtool.strict",
        "imgtool.oci", "imgtool.oci.media", "imgtool.oci.descriptor", "imgtool.gallery.model",
        "imgtool.gallery.versions", "imgtool.gallery.lifecycle_model", "imgtool.tools.qemu", "store.errors",
        "store.digest", "store.canonical", "store.progress", "imgtool.net.subnet", "imgtool.net.nic",
        "imgtool.net.fabric", "imgtool.vm.shares"}
PURE_PACKAGES = ("imgtool.formats",)
SIDE_EFFECT_STDLIB = {"subprocess", "socket", "shutil", "threading", "multiprocessing", "http", "urllib",
                      "tempfile", "signal", "ctypes", "fcntl", "logging", "sh", "httpx", "typer"}


def is_pure(module: str) -> bool:
    return module in PURE or module.startswith(PURE_PACKAGES)


@pytest.mark.parametrize("module", sorted(m for m in ALL if is_pure(m)))
def test_pure_modules_import_only_pure_things(module: str) -> None:
    for target in targets(module):
        root = target.split(".")[0]
        if root in PACKAGES:
            project = _project_module(target)
            assert project is None or is_pure(project), f"{module} imports {target}, which has side effects"
        else:
            assert root not in SIDE_EFFECT_STDLIB, f"{module} imports {target}"


def _project_module(target: str) -> str | None:
    """The project module a dotted import target names (the module itself, or the module of a name)."""
    while target and target not in ALL:
        target = target.rpartition(".")[0]
    return target or None


# The layers, bottom to top. A module belongs to the layer of its longest listed prefix, and may import
# only modules of its own layer or of layers below; peers in one layer (trust and remote, the flows and
# environments, the CLI and the web view) do not import each other. docs/DESIGN.md shows the same table.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("store", ("store",)),
    ("vocabularies", ("imgtool", "imgtool.errors", "imgtool.vocab", "imgtool.clock", "imgtool.names",
                      "imgtool.records", "imgtool.strict", "imgtool.home")),
    ("seams", ("imgtool.formats", "imgtool.tools", "imgtool.oci", "imgtool.net", "imgtool.nbd")),
    ("vm receipts", ("imgtool.vm.record", "imgtool.vm.state")),
    ("capture", ("imgtool.capture",)),
    ("gallery", ("imgtool.gallery",)),
    ("vm", ("imgtool.vm",)),
    ("guest", ("imgtool.guest",)),
    ("sharing", ("imgtool.trust", "imgtool.remote")),
    ("flows", ("imgtool.flows", "imgtool.environment")),
    # Streaming boot judges a version through flows.sharing, exactly as pull does: a flow on the flows.
    ("streaming", ("imgtool.stream",)),
    ("maintenance", ("imgtool.maintenance", "imgtool.garbage")),
    ("front ends", ("imgtool.cli", "imgtool.web")),
    ("entry", ("imgtool.__main__",)),  # `python -m imgtool` runs the CLI
)
PEERS = {"sharing", "flows", "front ends"}  # packages of these layers stay apart

# Arrows between peers of one layer, each with its reason (no arrow runs down-to-up). Nothing else may.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("imgtool.cli.serve_cmds", "imgtool.web.server"): "`imgtool serve` starts the web view, the other front end",
    ("imgtool.cli.serve_cmds", "imgtool.web.security"): "`imgtool serve` checks the listen address it is given",
}


def layer_of(module: str) -> tuple[int, str]:
    """The index and package prefix of the layer `module` belongs to (its longest listed prefix)."""
    best: tuple[int, str] | None = None
    for index, (_name, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (index, prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def _is_namespace(module: str) -> bool:
    """A package `__init__` that holds only a docstring: importing through it depends on nothing."""
    body = ast.parse(ALL[module].read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def edges(module: str) -> set[str]:
    """The project modules `module` imports (anywhere in it), namespaces left out."""
    found = {_project_module(t) for t in targets(module) if t.split(".")[0] in PACKAGES}
    return {m for m in found if m is not None and m != module and not _is_namespace(m)}


def backward(module: str, target: str) -> bool:
    (mine, my_prefix), (theirs, their_prefix) = layer_of(module), layer_of(target)
    if theirs != mine:
        return theirs > mine
    return LAYERS[mine][0] in PEERS and my_prefix != their_prefix


@pytest.mark.parametrize("module", sorted(ALL))
def test_every_module_has_a_layer(module: str) -> None:
    layer_of(module)


@pytest.mark.parametrize("module", sorted(ALL))
def test_layers_import_downwards_only(module: str) -> None:
    against = sorted(t for t in edges(module) if backward(module, t) and (module, t) not in EXCEPTIONS)
    assert against == [], f"{module} imports {against}, above it ({LAYERS[layer_of(module)[0]][0]} layer)"


def test_the_exceptions_are_still_needed() -> None:
    """An exception whose import is gone is deleted from the list, so the list stays the truth."""
    stale = [pair for pair in EXCEPTIONS if pair[1] not in edges(pair[0]) or not backward(*pair)]
    assert stale == []


def test_the_order_is_enforced_on_a_known_arrow() -> None:
    """The check itself can fail: an arrow from the store up to the gallery is backward."""
    assert backward("imgtool.names", "imgtool.gallery.lookup") and backward("imgtool.trust.keys", "imgtool.remote.pull")
    assert not backward("imgtool.flows.sharing", "imgtool.remote.pull")


def closure(start: str) -> set[str]:
    """Every project module that importing `start` loads (module-level imports, transitively)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in ALL]  # packages
        for target in targets(module, top_only=True):
            project = _project_module(target) if target.split(".")[0] in PACKAGES else None
            if project is not None:
                todo.append(project)
    return seen


VM_RUNTIME = {"imgtool.vm.runtime", "imgtool.vm.lifecycle", "imgtool.tools.qmp", "imgtool.tools.accel",
              "imgtool.tools.qemu"}


def test_publishing_does_not_load_the_vm_runtime() -> None:
    loaded = closure("imgtool.gallery.image_versions")
    assert "imgtool.capture.sources" in loaded  # the closure really follows imports
    assert loaded & VM_RUNTIME == set()


def test_the_cli_entry_point_loads_no_domain_module() -> None:
    """`imgtool --help` stays fast: commands import the domain inside their functions."""
    loaded = closure("imgtool.cli.main")
    heavy = {m for m in loaded if m.startswith(("imgtool.gallery.image_versions", "imgtool.vm.lifecycle",
                                                "imgtool.vm.runtime", "imgtool.vm.bases", "imgtool.capture",
                                                "imgtool.tools.nbd", "imgtool.remote.", "store.ingest",
                                                "imgtool.web"))}
    assert heavy == set()


@pytest.mark.parametrize("module", sorted(m for m in ALL if not m.startswith(("imgtool.web", "imgtool.cli"))))
def test_only_the_front_ends_import_the_web_view(module: str) -> None:
    """The web view is a front end beside the CLI: the domain never reaches up into it."""
    assert uses(module, "imgtool.web") == []
    for framework in ("starlette", "jinja2", "uvicorn"):
        assert uses(module, framework) == [], f"{module} imports {framework}: only imgtool/web renders HTML"


def test_sharing_does_not_load_capture_or_the_qemu_tools() -> None:
    """push, pull and revoke edit records and move packs: they need neither capture nor qemu (nor the
    `sh` seam), which cost every remote command about 40 ms to import."""
    loaded = closure("imgtool.flows.sharing")
    assert "imgtool.remote.push" in loaded and "imgtool.gallery.version_changes" in loaded
    heavy = {m for m in loaded if m.startswith(("imgtool.capture", "imgtool.gallery.image_versions",
                                                "imgtool.tools.run", "imgtool.tools.qemu_img"))}
    assert heavy == set()
