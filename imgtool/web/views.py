"""What each page shows, as plain data for its template, built from the `--json` documents
(imgtool/web/documents.py) and a few reads of the same records.

Pages never show more than a window of a long list: a definition with 10,000 versions is shown 50
versions a page (newest first), so a page reads 50 full records, not 10,000. What depends only on
names (version lists, `latest`, lineage facts, chunk users) is remembered between requests while the
names are unchanged (imgtool/web/memo.py); the documents built from it are the same as the CLI's (a
test compares them).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from imgtool.errors import ImgtoolError
from imgtool.flows import replication, shapes, signing, version_facts
from imgtool.gallery import galleries, lookup
from imgtool.gallery.model import ImageVersion
from imgtool.gallery.version_index import Summary, summaries
from imgtool.home import Home
from imgtool.names import DefinitionRef, parse_definition_ref
from imgtool.vm import runtime
from imgtool.vm.record import load, vm_dir
from imgtool.web import documents, lineage, sharing
from imgtool.web.facts import FactMemo, vm_facts
from imgtool.web.memo import Memo, definition_key, home_key

PAGE_SIZE = 50
MAX_RECORDS = 4096  # version documents remembered by record digest (a few pages of every definition)
CONSOLE_TAIL_BYTES = 16 << 10


@dataclass(frozen=True)
class Window:
    """One page of a list of `total` items shown newest first: indexes into the lowest-first list."""
    page: int
    pages: int
    indexes: range  # lowest-first indexes, shown in reverse

    @classmethod
    def of(cls, total: int, page: int, size: int = PAGE_SIZE) -> Window:
        pages = max(1, (total + size - 1) // size)
        page = min(max(1, page), pages)
        stop = total - (page - 1) * size
        return cls(page, pages, range(max(0, stop - size), max(0, stop)))


@dataclass
class Caches:
    """What the server remembers between requests (each part is thread-safe)."""

    memo: Memo = field(default_factory=Memo)
    records: Memo = field(default_factory=lambda: Memo(size=MAX_RECORDS))
    chunks: sharing.ChunkMemo = field(default_factory=sharing.ChunkMemo)
    facts: FactMemo = field(default_factory=FactMemo)


def _today() -> str:
    return dt.date.today().isoformat()  # what lookup.latest_of resolves against


def version_list(home: Home, ref: str, caches: Caches) -> list[dict[str, Any]]:
    """`version list --json`, remembered while the definition's names are unchanged (and the date)."""
    key = definition_key(home, parse_definition_ref(ref))
    return caches.memo.get(f"list {ref}", key and (*key, _today()), lambda: documents.version_list(home, ref))


def encoded(home: Home, ref: str, caches: Caches, *, resolve: bool) -> bytes:
    """version_list (or version_resolve) as the JSON bytes /api/ sends, remembered like them: encoding
    10,000 versions costs more than finding them."""
    key = definition_key(home, parse_definition_ref(ref))
    read = version_resolve if resolve else version_list
    return caches.memo.get(f"json {resolve} {ref}", key and (*key, _today()), lambda: json.dumps(
        read(home, ref, caches), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode())


def version_resolve(home: Home, ref: str, caches: Caches) -> dict[str, Any]:
    """`version resolve --json`, remembered like version_list."""
    key = definition_key(home, parse_definition_ref(ref))
    return caches.memo.get(f"resolve {ref}", key and (*key, _today()),
                           lambda: documents.version_resolve(home, ref))


def version_show(home: Home, ref: str, caches: Caches) -> dict[str, Any]:
    """`version show --json`: the version shape (latest from the remembered resolve), its replication and
    its warm states and boot profile (flows/version_facts)."""
    version, record = lookup.get_version(home, ref)
    latest = version_resolve(home, f"{version.gallery}/{version.definition}", caches)["latest"]
    body = shapes.version(version, record, latest=latest == version.version)
    return {**body, **version_facts.facts(home, version, record)}


def every_version(home: Home, caches: Caches) -> list[Summary]:
    """The summaries of every version in the home, through each definition's version index."""

    def read() -> list[Summary]:
        found: list[Summary] = []
        for g in galleries.list_galleries(home):
            for d in galleries.list_definitions(home, g.name):
                found += summaries(home, DefinitionRef(g.name, d.name))
        return found

    return caches.memo.get("every version", home_key(home), read)


def version_users(home: Home, ref: str, caches: Caches) -> dict[str, Any]:
    """`version users --json` (imgtool.gallery.users.users, from remembered lineage facts)."""
    root, _ = lookup.get_version(home, ref)
    children: dict[str, list[str]] = {}
    for fact in caches.facts.versions(home, [s.record for s in every_version(home, caches)]):
        for parent in fact.parents:
            children.setdefault(parent, []).append(fact.label)
    via = {root.label: root.label}
    versions, queue = [], deque([root.label])
    while queue:
        label = queue.popleft()
        for child in sorted(children.get(label, [])):
            if child not in via:
                via[child] = label
                versions.append({"version": child, "parent": label})
                queue.append(child)
    vms = [{"name": vm.name, "image": vm.image} for vm in vm_facts(home) if vm.image in via]
    return {"version": root.label, "vms": vms, "versions": versions}


def chunk_users(home: Home, caches: Caches) -> Any:
    """How many versions in the home hold each chunk."""
    return caches.memo.get("chunk users", home_key(home), lambda: sharing.chunk_users(
        home, caches.chunks, ([d["digest"] for d in s.disks] for s in every_version(home, caches))))


def lineage_graph(home: Home, caches: Caches) -> lineage.Graph:
    def draw() -> lineage.Graph:
        facts = caches.facts.versions(home, [s.record for s in every_version(home, caches)])
        return lineage.build(facts, vm_facts(home))

    return caches.memo.get("lineage", home_key(home), draw)


def warm(home: Home, caches: Caches) -> None:
    """Fill the caches the first visits would fill (the server does this before it prints its URL): every
    definition's lists, their /api bytes, its first page and sharing basis, then the whole-home views."""
    for g in galleries.list_galleries(home):
        for d in galleries.list_definitions(home, g.name):
            ref = f"{g.name}/{d.name}"
            encoded(home, ref, caches, resolve=False)
            encoded(home, ref, caches, resolve=True)
            definition_page(home, ref, 1, caches)
            sharing_basis(home, ref, caches)
    chunk_users(home, caches)
    lineage_graph(home, caches)


def definition_page(home: Home, ref: str, page: int, caches: Caches) -> dict[str, Any]:
    """A definition, and one page of its versions with everything the versions table shows."""
    definition = documents.definition_show(home, ref)
    resolved = version_resolve(home, ref, caches)
    listed = version_list(home, ref, caches)
    window = Window.of(len(listed), page)
    key = definition_key(home, parse_definition_ref(ref))
    reasons = caches.memo.get(f"reasons {ref}", key and (*key, _today()), lambda: {
        c["version"]: c["reason"] for c in resolved["candidates"]})
    rows = [version_row(home, listed[i], reasons.get(listed[i]["version"]), caches)
            for i in reversed(window.indexes)]
    return {"definition": definition, "resolved": resolved, "rows": rows, "window": window, "total": len(listed)}


def version_row(home: Home, summary: dict[str, Any], reason: str | None, caches: Caches) -> dict[str, Any]:
    """One line of the versions table: the full version document (check, revocation, audit, provenance),
    its replication per target, who signed it (pulled versions) and why latest did or did not pick it.
    The version shape comes from the record the listing names (immutable: remembered by its digest)."""
    record, latest = summary["record"], summary["latest"]

    def shape() -> dict[str, Any]:
        return shapes.version(ImageVersion.from_json(home.store.get_manifest(record)), record, latest=latest)

    body = caches.records.get("version", (record, latest), shape)
    return {**body, "reason": reason,
            "replication": replication.describe(home, body["gallery"], body["definition"], body["version"]),
            "signed": signed_by(home, body)}


def signed_by(home: Home, body: dict[str, Any]) -> dict[str, Any] | None:
    """For a pulled version: its remote, the keys whose signatures verify now and whether its remote's
    policy accepts it (checked offline against the stored signatures, chunks not re-hashed)."""
    origin = body.get("provenance", {}).get("pulled_from")
    if not isinstance(origin, dict):
        return None

    try:
        verdict = signing.verify_local(home, body["ref"], deep=False)
    except ImgtoolError as exc:
        return {"remote": origin.get("remote"), "trusted": False, "keys": [], "why": exc.message}
    if verdict is None:
        return None
    keys = list(verdict.acceptance.verified_by)
    return {"remote": verdict.remote, "trusted": True, "keys": keys, "policy": verdict.acceptance.policy,
            "why": None if keys else f"policy {verdict.acceptance.policy}: accepted unsigned"}


def version_page(home: Home, ref: str, caches: Caches) -> dict[str, Any]:
    """A version: its document, its disks with stored and unique bytes, the VMs on it, what came from it."""
    body = version_show(home, ref, caches)
    users = chunk_users(home, caches)
    disks = []
    for disk in body["disks"]:
        chunks = caches.chunks.chunks(home, [disk["digest"]])
        disks.append({**disk, "stored_bytes": sharing.stored(home, chunks),
                      "unique_bytes": sharing.stored(home, (c for c in chunks if users[c] <= 1))})
    definition = galleries.get_definition(home, parse_definition_ref(f"{body['gallery']}/{body['definition']}"))
    return {"version": body, "disks": disks, "users": version_users(home, ref, caches),
            "boot_check": definition.boot_check and definition.boot_check.to_json(),
            "signed": signed_by(home, body)}


def sharing_page(home: Home, ref: str, page: int, caches: Caches) -> dict[str, Any]:
    versions, in_definition = sharing_basis(home, ref, caches)
    window = Window.of(len(versions), page)
    rows = list(reversed(sharing.rows(home, caches.chunks, versions, window.indexes, in_definition=in_definition,
                                      users=chunk_users(home, caches))))
    top = max((r.stored_bytes for r in rows), default=0) or 1
    return {"ref": ref, "rows": rows, "window": window, "total": len(versions), "top": top}


def sharing_basis(home: Home, ref: str, caches: Caches) -> tuple[list[tuple[str, tuple[str, ...]]], Any]:
    """A definition's versions as (version, disk digests), lowest first, and how many of them hold each
    chunk; remembered while its names are unchanged."""

    def compute() -> tuple[list[tuple[str, tuple[str, ...]]], Any]:
        versions = [(v["version"], tuple(d["digest"] for d in v["disks"])) for v in version_list(home, ref, caches)]
        return versions, sharing.chunk_users(home, caches.chunks, (disks for _v, disks in versions))

    return caches.memo.get(f"sharing {ref}", definition_key(home, parse_definition_ref(ref)), compute)


def console_tail(home: Home, name: str) -> list[str]:
    """The last lines of a VM's serial console, without terminal control sequences (at most 16 KiB)."""
    load(home, name)  # NotFound for a VM that does not exist
    log = vm_dir(home, name) / runtime.SERIAL
    try:
        with log.open("rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - CONSOLE_TAIL_BYTES))
            data = handle.read(CONSOLE_TAIL_BYTES)
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", "replace").split("\n")
    if len(data) == CONSOLE_TAIL_BYTES:
        lines = lines[1:]  # the first line was cut by the window
    return [runtime.plain(line.rstrip("\r")) for line in lines][-200:]
