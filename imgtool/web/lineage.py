"""Lineage: which versions, VMs and remotes each version comes from, as a graph laid out for an SVG.

The graph is built from facts (pure): each version's parents (imgtool.gallery.users.parents: the
version a disk was captured or copied from, and the VM or snapshot it was captured through), where
it was pulled from, whether it is revoked; each VM's image. Edges run from origin to result:
version -> VM made from it -> version captured from that VM; remote -> version pulled from it;
version -> version copied from it (or captured through a VM that no longer exists).

Revocation spreads down the edges: everything that descends from a revoked version is marked, because
a version captured from a VM on a revoked image carries what got it revoked.

Only versions that take part in some lineage are drawn (a parent, a child, a VM, a remote, a
revocation); the others are counted, so a definition with 10,000 plain versions stays readable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_NODES = 400  # past this the SVG is unreadable anyway; the page says how many were left out

COLUMN = 240  # layout grid, in SVG user units
ROW = 64
NODE_W = 200
NODE_H = 44
MARGIN = 16


@dataclass(frozen=True)
class VersionFact:
    label: str  # G/D@X.Y.Z
    parents: tuple[str, ...] = ()  # versions it was captured or copied from
    via_vms: tuple[str, ...] = ()  # VMs (or VM/SNAP snapshots) its disks were captured from
    pulled_from: str | None = None  # remote name
    pulled_digest: str | None = None  # the manifest digest it was pulled as
    revoked: str | None = None  # the reason


@dataclass(frozen=True)
class VmFact:
    name: str
    image: str  # G/D@X.Y.Z


@dataclass
class Node:
    key: str  # "version:G/D@X.Y.Z", "vm:NAME", "remote:NAME"
    kind: str
    title: str
    detail: str | None = None
    revoked: str | None = None  # the reason, on a revoked version
    tainted: bool = False  # descends from a revoked version
    layer: int = 0
    x: int = 0
    y: int = 0
    href: str | None = None


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    label: str


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    hidden_versions: int = 0  # versions with no lineage, not drawn
    truncated: int = 0  # nodes left out past MAX_NODES
    width: int = 0
    height: int = 0

    def edge_paths(self) -> list[dict[str, Any]]:
        """Each edge as an SVG path (a horizontal S-curve from the right of its source to the left of its
        target) with its label, for the template."""
        paths = []
        for e in self.edges:
            a, b = self.nodes[e.source], self.nodes[e.target]
            x1, y1 = a.x + NODE_W, a.y + NODE_H // 2
            x2, y2 = b.x, b.y + NODE_H // 2
            mid = (x1 + x2) // 2
            paths.append({"d": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}", "label": e.label,
                          "source": a.title, "target": b.title, "tainted": b.tainted or bool(b.revoked)})
        return paths


def _vm_of(source: str) -> str:
    """The VM a capture came through: `vm:NAME` names it, a snapshot `NAME/SNAP` belongs to NAME."""
    return source.split("/", 1)[0]


def build(versions: list[VersionFact], vms: list[VmFact]) -> Graph:
    """The lineage graph of these facts, laid out (see the module docstring for what is drawn)."""
    graph = Graph()
    by_label = {v.label: v for v in versions}
    vm_names = {vm.name for vm in vms}
    edges: set[Edge] = set()
    for vm in vms:
        edges.add(Edge(f"version:{vm.image}", f"vm:{vm.name}", "VM made from it"))
    for v in versions:
        target = f"version:{v.label}"
        through = {_vm_of(s) for s in v.via_vms}
        for name in sorted(through & vm_names):
            edges.add(Edge(f"vm:{name}", target, "captured from the VM"))
        for parent in v.parents:
            vm_edge = any(vm.image == parent and vm.name in through for vm in vms)
            if not vm_edge:
                label = "captured (the VM is gone)" if through else "copied from"
                edges.add(Edge(f"version:{parent}", target, label))
        if v.pulled_from:
            edges.add(Edge(f"remote:{v.pulled_from}", target, "pulled"))
    keys = {k for e in edges for k in (e.source, e.target)}
    keys |= {f"version:{v.label}" for v in versions if v.revoked}
    graph.hidden_versions = sum(1 for v in versions if f"version:{v.label}" not in keys)
    ordered = sorted(keys)
    graph.truncated = max(0, len(ordered) - MAX_NODES)
    kept = set(ordered[:MAX_NODES])
    for key in ordered[:MAX_NODES]:
        graph.nodes[key] = _node(key, by_label)
    graph.edges = sorted((e for e in edges if e.source in kept and e.target in kept),
                         key=lambda e: (e.source, e.target))
    _taint(graph)
    _layout(graph)
    return graph


def _node(key: str, by_label: dict[str, VersionFact]) -> Node:
    kind, _, name = key.partition(":")
    if kind == "version":
        fact = by_label.get(name)
        detail = None
        if fact is not None and fact.pulled_digest:
            detail = f"pulled as {fact.pulled_digest[:19]}…"
        elif fact is None:
            detail = "not in this home"
        return Node(key, kind, name, detail, revoked=fact.revoked if fact else None,
                    href=f"/versions/{name.replace('@', '/')}" if fact else None)
    if kind == "vm":
        return Node(key, kind, name, "VM", href=f"/vms/{name}")
    return Node(key, kind, name, "remote", href="/remotes")


def _taint(graph: Graph) -> None:
    """Mark every node downstream of a revoked version."""
    children: dict[str, list[str]] = {}
    for e in graph.edges:
        children.setdefault(e.source, []).append(e.target)
    queue = deque(k for k, n in graph.nodes.items() if n.revoked)
    while queue:
        for child in children.get(queue.popleft(), []):
            node = graph.nodes[child]
            if not node.tainted:
                node.tainted = True
                queue.append(child)


def _layout(graph: Graph) -> None:
    """Columns by longest path from a root (origins left, results right); rows in name order."""
    incoming: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for e in graph.edges:
        incoming[e.target].append(e.source)
    layer: dict[str, int] = {}

    def depth(key: str, trail: frozenset[str]) -> int:
        if key not in layer:
            # A cycle cannot come from real captures; cut it rather than recurse for ever.
            layer[key] = 1 + max((depth(p, trail | {key}) for p in incoming[key] if p not in trail), default=-1)
        return layer[key]

    rows: dict[int, int] = {}
    for key in sorted(graph.nodes):
        node = graph.nodes[key]
        node.layer = depth(key, frozenset())
    for key in sorted(graph.nodes, key=lambda k: (graph.nodes[k].layer, k)):
        node = graph.nodes[key]
        row = rows.get(node.layer, 0)
        rows[node.layer] = row + 1
        node.x, node.y = MARGIN + node.layer * COLUMN, MARGIN + row * ROW
    graph.width = MARGIN * 2 + (max(rows, default=0) + 1) * COLUMN
    graph.height = MARGIN * 2 + max(rows.values(), default=1) * ROW
