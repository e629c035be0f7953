"""What each page shows, as plain data for its template, built from the `--json` documents
(imgtool/web/documents.py) and a few reads of the same records.

Pages never show more than a window of a long list: a definition with 10,000 versions is shown 50
versions a page (newest first), so a page reads 50 full records, not 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgtool.cli import shapes
from imgtool.errors import ImgtoolError
from imgtool.gallery import galleries, lookup
from imgtool.home import Home
from imgtool.names import parse_definition_ref
from imgtool.remote import replication
from imgtool.trust import gate
from imgtool.vm import runtime
from imgtool.vm.record import load, vm_dir
from imgtool.web import documents, sharing

PAGE_SIZE = 50
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


def definition_page(home: Home, ref: str, page: int) -> dict[str, Any]:
    """A definition, and one page of its versions with everything the versions table shows."""
    definition = documents.definition_show(home, ref)
    resolved = documents.version_resolve(home, ref)
    listed = documents.version_list(home, ref)
    window = Window.of(len(listed), page)
    reasons = {c["version"]: c["reason"] for c in resolved["candidates"]}
    rows = [version_row(home, listed[i], reasons.get(listed[i]["version"])) for i in reversed(window.indexes)]
    return {"definition": definition, "resolved": resolved, "rows": rows, "window": window, "total": len(listed)}


def version_row(home: Home, summary: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """One line of the versions table: the full version document (check, revocation, audit, provenance),
    its replication per target, who signed it (pulled versions) and why latest did or did not pick it."""

    version, record = lookup.get_version(home, summary["ref"])
    body = shapes.version(version, record, latest=summary["latest"])
    return {**body, "reason": reason,
            "replication": replication.describe(home, version.gallery, version.definition, version.version),
            "signed": signed_by(home, body)}


def signed_by(home: Home, body: dict[str, Any]) -> dict[str, Any] | None:
    """For a pulled version: its remote, the keys whose signatures verify now and whether its remote's
    policy accepts it (checked offline against the stored signatures, chunks not re-hashed)."""
    origin = body.get("provenance", {}).get("pulled_from")
    if not isinstance(origin, dict):
        return None

    try:
        verdict = gate.verify_local(home, body["ref"], deep=False)
    except ImgtoolError as exc:
        return {"remote": origin.get("remote"), "trusted": False, "keys": [], "why": exc.message}
    if verdict is None:
        return None
    keys = list(verdict.acceptance.verified_by)
    return {"remote": verdict.remote, "trusted": True, "keys": keys, "policy": verdict.acceptance.policy,
            "why": None if keys else f"policy {verdict.acceptance.policy}: accepted unsigned"}


def version_page(home: Home, ref: str, memo: sharing.ChunkMemo) -> dict[str, Any]:
    """A version: its document, its disks with stored and unique bytes, the VMs on it, what came from it."""
    body = documents.version_show(home, ref)
    users = memo.users(home)
    disks = []
    for disk in body["disks"]:
        chunks = memo.chunks(home, [disk["digest"]])
        disks.append({**disk, "stored_bytes": sharing.stored(home, chunks),
                      "unique_bytes": sharing.stored(home, (c for c in chunks if users[c] <= 1))})
    definition = galleries.get_definition(home, parse_definition_ref(f"{body['gallery']}/{body['definition']}"))
    return {"version": body, "disks": disks, "users": documents.version_users(home, ref),
            "boot_check": definition.boot_check and definition.boot_check.to_json(),
            "signed": signed_by(home, body)}


def sharing_page(home: Home, ref: str, page: int, memo: sharing.ChunkMemo) -> dict[str, Any]:
    listed = documents.version_list(home, ref)
    window = Window.of(len(listed), page)
    versions = [(v["version"], [d["digest"] for d in v["disks"]]) for v in listed]
    rows = list(reversed(sharing.rows(home, memo, versions, window.indexes)))
    top = max((r.stored_bytes for r in rows), default=0) or 1
    return {"ref": ref, "rows": rows, "window": window, "total": len(listed), "top": top}


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
