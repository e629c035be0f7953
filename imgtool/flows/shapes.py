"""The JSON vocabulary of imgtool: one noun, one shape, in every command (documented in docs/GUIDE.md).

Conventions every command (and every new one) follows:
- An object's full reference is "ref": a definition "G/D", a version "G/D@X.Y.Z". The parts are
  separate fields: "gallery", "definition", "version" (always the bare X.Y.Z).
- "latest" on a version is a boolean: whether G/D@latest resolves to it. On a definition-level answer
  (version resolve, remote versions) it is the bare X.Y.Z that latest resolves to, or null.
- A VM is {"name", "image" (a version ref), "state", "ssh_port", ...}: state and port at the top
  level, the same in vm list, vm show, vm new, vm start, vm stop.
- A digest is always the full "blake3:<64 hex>"; a size is an integer number of bytes in a key
  ending in "_size" or "_bytes"; memory is "memory_mib"; times are ISO 8601 UTC ("...Z").
- A deletion answers {"deleted": REF}; an error is {"error": {"category", "message", "hint",
  "exit_code"}} (alone, or added to the command's document).
- Absent values are null, never "" or "-".
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from imgtool.clock import stamp
from imgtool.errors import ImgtoolError
from imgtool.gallery.model import Definition, Disk, Gallery, ImageVersion
from imgtool.home import Home
from imgtool.vm.record import VmRecord, load

if TYPE_CHECKING:
    from imgtool.net.networks import NetworkRecord
    from imgtool.trust.policy import TrustedKey


def version_ref(gallery: str, definition: str, version: str) -> str:
    return f"{gallery}/{definition}@{version}"


def ref_parts(gallery: str, definition: str, version: str) -> dict[str, str]:
    return {"ref": version_ref(gallery, definition, version), "gallery": gallery, "definition": definition,
            "version": version}


def disk(d: Disk) -> dict[str, Any]:
    return {"lun": d.lun, "digest": d.digest, "virtual_size": d.virtual_size, "source": d.source}


def version(v: ImageVersion, record: str, *, latest: bool) -> dict[str, Any]:
    """A version: its record's fields (every one, also those added later: check, revocation, ...), with
    the reference spelt out, the record digest and whether latest picks it."""
    body = v.to_json()
    for key in ("format", "kind", "links"):
        body.pop(key, None)
    body["disks"] = [disk(d) for d in v.disks]
    return {**body, **ref_parts(v.gallery, v.definition, v.version), "record": record, "latest": latest}


def definition(d: Definition) -> dict[str, Any]:
    body = d.to_json()
    for key in ("format", "kind", "links", "gallery", "name"):
        body.pop(key)
    return {"ref": f"{d.gallery}/{d.name}", "gallery": d.gallery, "definition": d.name, **body}


def vm(record: VmRecord, status: dict[str, Any]) -> dict[str, Any]:
    """A VM: its receipt (without the embedded definition, which version show has) and its state."""
    body = {k: v for k, v in record.to_json().items() if k not in ("definition", "format", "kind")}
    return {**body, "state": status["state"], "ssh_port": status.get("ssh_port"), "accel": status.get("accel"),
            "pid": status.get("pid"), "started": status.get("started"),
            "forwards": [{"host": f.host, "guest": f.guest} for f in record.forwards], "updated": record.updated,
            "hydration": status.get("hydration"),
            "shares": [dataclasses.asdict(s) for s in record.shares],
            "networks": [dataclasses.asdict(n) for n in record.networks], **vm_address(record, status)}


def vm_address(record: VmRecord, status: dict[str, Any]) -> dict[str, Any]:
    """Where a VM is reached from this machine: "address" (127.0.0.1 while it runs, else null) and
    "ports", each {"host", "guest", "purpose"}: SSH's (its host port null while stopped) and the forwards."""
    ssh_port = status.get("ssh_port")
    ports = [{"host": ssh_port, "guest": 22, "purpose": "ssh"}]
    ports += [{"host": f.host, "guest": f.guest, "purpose": "forward"} for f in record.forwards]
    return {"address": "127.0.0.1" if ssh_port else None, "ports": ports}


def gallery(g: Gallery) -> dict[str, Any]:
    return {"ref": g.name, **dataclasses.asdict(g)}


def trusted_key(remote: str, entry: TrustedKey) -> dict[str, Any]:
    return {"remote": remote, "key_id": entry.key_id, "name": entry.key.name, "gallery": entry.gallery,
            "expires": stamp(entry.key.expires) if entry.key.expires else None,
            "added": stamp(entry.added)}


def version_of(home: Home, text: str) -> dict[str, Any]:
    """The version shape of G/D@X.Y.Z or G/D@latest, looked up."""
    from imgtool.gallery import lookup  # noqa: PLC0415 - lazily: the CLI imports shapes on every start
    from imgtool.names import DefinitionRef  # noqa: PLC0415

    v, digest = lookup.get_version(home, text)
    chosen, _ = lookup.resolve(home, DefinitionRef(v.gallery, v.definition))
    return version(v, digest, latest=str(chosen) == v.version)


def vm_of(home: Home, name: str, **extra: Any) -> dict[str, Any]:
    """The VM shape of VM `name`, its runtime state read now, with `extra` fields added."""
    from imgtool.vm import runtime as vmrun  # noqa: PLC0415 - lazily: the CLI imports shapes on every start

    return {**vm(load(home, name), vmrun.status(home, name)), **extra}


def error(exc: ImgtoolError) -> dict[str, Any]:
    """The error shape: alone, or added to the command's document as "error"."""
    return {"category": exc.category, "message": exc.message, "hint": exc.hint or None,
            "exit_code": exc.exit_code}


def human_bytes(n: int | None) -> str:
    """A size for people (tables, pages); JSON keeps integers of bytes."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def incomplete_vm(name: str) -> dict[str, Any]:
    """A VM folder without a record (an unfinished vm new): the same keys, unknown values null."""
    return {"name": name, "image": None, "state": "incomplete", "ssh_port": None, "accel": None, "cpus": None,
            "memory_mib": None, "disks": [], "forwards": [], "seed": None, "version_digest": None, "created": None,
            "hydration": None, "shares": [], "networks": [], "address": None, "ports": []}


# The keys each noun always has (docs/GUIDE.md, "JSON output"; tests/test_json_shapes.py checks every
# command's output against these).
KEYS: dict[str, tuple[str, ...]] = {
    "error": ("category", "message", "hint", "exit_code"),
    "gallery": ("ref", "name", "description", "created", "updated"),
    "definition": ("ref", "gallery", "definition", "publisher", "offer", "sku", "os_type", "os_state", "firmware",
                   "architecture", "recommended", "disallowed_disk_formats", "end_of_life", "features", "tags",
                   "created", "updated"),
    "version": ("ref", "gallery", "definition", "version", "record", "latest", "os_state", "disks", "published",
                "exclude_from_latest", "end_of_life", "block_deletion_before_end_of_life", "provenance"),
    "version_summary": ("ref", "gallery", "definition", "version", "record", "latest", "os_state", "disks",
                        "published", "exclude_from_latest", "end_of_life"),
    "disk": ("lun", "digest", "virtual_size"),
    "resolve": ("ref", "gallery", "definition", "latest", "resolves_to", "candidates"),
    "capture": ("digest", "virtual_size", "source"),
    "export": ("path", "format", "lun", "digest", "virtual_size"),
    "vm": ("name", "image", "state", "ssh_port", "accel", "cpus", "memory_mib", "disks", "forwards", "seed",
           "version_digest", "created", "hydration", "shares", "networks", "address", "ports"),
    "snapshot": ("vm", "name", "ref", "created", "image", "disks", "stored_bytes"),
    "deleted": ("deleted",),
    "network": ("name", "subnet", "created", "project", "vms", "switch"),
    "exec": ("vm", "exit_code"),
    "environment": ("project", "file", "actions"),
    "console": ("vm", "lines", "match"),
}


def network(record: NetworkRecord, vms: list[dict[str, Any]], switch: dict[str, Any] | None) -> dict[str, Any]:
    """A network: its record, the VMs with a NIC on it (name, address, MAC) and its switch (null: none runs)."""
    return {**record.to_json(), "project": record.project, "vms": vms, "switch": switch and {
        "pid": switch.get("pid"), "ports": [{k: p.get(k) for k in ("vm", "mac", "dropped")} for p in switch["ports"]]}}
