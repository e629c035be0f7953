"""The import rules of docs/DESIGN.md, checked on the source (an AST walk; nothing is imported).

- `store` is generic: it imports nothing from `imgtool`.
- Only `imgtool/cli/` imports typer and writes to the terminal (print, sys.stdout/stderr).
- Only the subprocess seam (`imgtool/tools/run.py`) imports `sh`; only the network edge imports httpx.
- Pure modules (names, records, version numbers and `latest`, the gallery model, argv builders, the
  vocabularies, `formats/`) import only other pure modules and side-effect-free standard modules.
- Lower layers never import higher ones: tools and formats know nothing of galleries, VMs or the CLI;
  nothing but the CLI imports the CLI.
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


def _walk(node: ast.AST, top: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        inner = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
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
PURE = {"imgtool.errors", "imgtool.clock", "imgtool.names", "imgtool.records", "imgtool.vocab", "imgtool.gallery.model",
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


LAYERS = {  # package -> packages it must never import
    "imgtool.tools": ("imgtool.gallery", "imgtool.capture", "imgtool.vm", "imgtool.cli", "imgtool.remote",
                      "imgtool.trust", "imgtool.guest", "imgtool.maintenance", "imgtool.net", "imgtool.environment"),
    # Networks stand below the VMs (a VM start uses them) and know nothing of galleries or VMs.
    "imgtool.net": ("imgtool.gallery", "imgtool.capture", "imgtool.vm", "imgtool.cli", "imgtool.remote",
                    "imgtool.trust", "imgtool.guest", "imgtool.maintenance", "imgtool.environment"),
    "imgtool.environment": ("imgtool.cli",),
    "imgtool.formats": ("imgtool.tools", "imgtool.gallery", "imgtool.capture", "imgtool.vm", "imgtool.cli"),
    "imgtool.gallery": ("imgtool.cli",),
    "imgtool.capture": ("imgtool.cli", "imgtool.vm.runtime", "imgtool.vm.lifecycle"),
    "imgtool.vm": ("imgtool.cli", "imgtool.environment"),
    "imgtool.remote": ("imgtool.cli",),
    "imgtool.trust": ("imgtool.cli",),
    "imgtool.guest": ("imgtool.cli",),
    "imgtool.maintenance": ("imgtool.cli",),
}


@pytest.mark.parametrize("module", sorted(ALL))
def test_layers_import_downwards_only(module: str) -> None:
    for package, forbidden in LAYERS.items():
        if module == package or module.startswith(package + "."):
            for banned in forbidden:
                assert uses(module, banned) == [], f"{module} must not import {banned}"


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
    loaded = closure("imgtool.remote.service")
    assert "imgtool.remote.push" in loaded and "imgtool.gallery.version_changes" in loaded
    heavy = {m for m in loaded if m.startswith(("imgtool.capture", "imgtool.gallery.image_versions",
                                                "imgtool.tools.run", "imgtool.tools.qemu_img"))}
    assert heavy == set()
