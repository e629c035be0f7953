"""The `--json` documents of the read-only commands, for `/api/...` and for the pages built on them.

Each function returns exactly what `imgtool --json COMMAND` prints for the same home (a test runs both
and compares), built from the same library calls and the same shape functions. Where a CLI command
still builds its document inline, the composition is written here once more from the same parts; the
flow layer (issue 20) is where both should end up calling one function.

Nothing here writes: these are reads of names, records and state files. (`imgtool du` is run as a child
process instead: imgtool/web/child.py.)
"""

from __future__ import annotations

from typing import Any

from imgtool.flows import shapes, version_facts
from imgtool.gallery import galleries, lookup, revocation, users
from imgtool.home import Home
from imgtool.names import parse_definition_ref
from imgtool.remote import remotes
from imgtool.trust.homes import trust_store
from imgtool.vm import lifecycle
from imgtool.vm import runtime as vmrun
from imgtool.vm.record import load

__all__ = ["definition_list", "definition_show", "gallery_list", "gallery_show", "remote_list",
           "trust_list", "version_list", "version_resolve", "version_show", "version_users",
           "vm_list", "vm_show"]


def gallery_list(home: Home) -> list[dict[str, Any]]:
    """`imgtool gallery list --json`"""
    return [shapes.gallery(g) for g in galleries.list_galleries(home)]


def gallery_show(home: Home, name: str) -> dict[str, Any]:
    """`imgtool gallery show NAME --json`"""
    g = galleries.get_gallery(home, name)
    return {**shapes.gallery(g), "definitions": [d.name for d in galleries.list_definitions(home, name)]}


def definition_list(home: Home, gallery: str) -> list[dict[str, Any]]:
    """`imgtool definition list GALLERY --json`"""
    return [shapes.definition(d) for d in galleries.list_definitions(home, gallery)]


def definition_show(home: Home, ref: str) -> dict[str, Any]:
    """`imgtool definition show G/D --json`"""
    return shapes.definition(galleries.get_definition(home, parse_definition_ref(ref)))


def version_list(home: Home, ref: str) -> list[dict[str, Any]]:
    """`imgtool version list G/D --json`: every version's summary, lowest first, with `latest`."""
    r = parse_definition_ref(ref)
    found = lookup.list_versions(home, r)
    latest = str(lookup.latest_of(found)[0])
    return [{**shapes.ref_parts(r.gallery, r.definition, v.version), **v.to_json(), "latest": v.version == latest}
            for v in found]


def version_resolve(home: Home, ref: str) -> dict[str, Any]:
    """`imgtool version resolve G/D --json`: what latest picks and every candidate's verdict."""
    r = parse_definition_ref(ref)
    chosen, verdicts = lookup.resolve(home, r)
    return {"ref": str(r), "gallery": r.gallery, "definition": r.definition,
            "latest": None if chosen is None else str(chosen),
            "resolves_to": None if chosen is None else f"{r}@{chosen}",
            "candidates": [{**shapes.ref_parts(r.gallery, r.definition, str(v.version)), "latest": v.chosen,
                            "reason": v.reason} for v in verdicts]}


def version_show(home: Home, ref: str) -> dict[str, Any]:
    """`imgtool version show G/D@X.Y.Z --json`: the version shape plus flows/version_facts."""
    version, record = lookup.get_version(home, ref)
    return {**shapes.version_of(home, ref), **version_facts.facts(home, version, record)}


def version_users(home: Home, ref: str) -> dict[str, Any]:
    """`imgtool version users G/D@X.Y.Z --json`"""
    return users.users(home, ref).to_json()


def vm_list(home: Home) -> list[dict[str, Any]]:
    """`imgtool vm list --json`: every VM with its real state; unfinished ones as incomplete."""
    rows: list[dict[str, Any]] = []
    for name in lifecycle.list_names(home):
        try:
            record = load(home, name)
        except Exception:  # an unfinished vm new, as vm list shows it
            rows.append(shapes.incomplete_vm(name))
            continue
        rows.append(shapes.vm(record, vmrun.status(home, name)))
    flags = revocation.vm_flags(home, {r["name"]: r["image"] for r in rows if r["image"]})
    for row in rows:
        row["revoked"] = flags[row["name"]].to_json() if row["name"] in flags else None
    return rows


def vm_show(home: Home, name: str) -> dict[str, Any]:
    """`imgtool vm show NAME --json`"""
    record = load(home, name)
    status = vmrun.status(home, name)
    revoked = revocation.revocation_of(home, record.image)
    snaps = [s["name"] for s in lifecycle.list_snapshots(home, name)]
    return {**shapes.vm(record, status), "qemu_argv": status.get("qemu_argv"), "snapshots": snaps,
            "revoked": revoked and revoked.to_json()}


def remote_list(home: Home) -> list[dict[str, Any]]:
    """`imgtool remote list --json`"""
    return [r.describe() for r in remotes.load_all(home).values()]


def trust_list(home: Home) -> list[dict[str, Any]]:
    """`imgtool trust list --json`: each remote's policy, signing key and trusted keys."""
    store = trust_store(home)
    return [{"remote": rt.remote, "policy": rt.policy, "signing_key": rt.signing_key,
             "keys": [shapes.trusted_key(rt.remote, k) for k in rt.keys]} for rt in store.remotes().values()]
