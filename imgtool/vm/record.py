"""VM records on disk: what each VM stands on (read by version delete and gc).

A VM's record is a receipt (see imgtool/vm.py); this module only reads the
parts other modules need, so they do not import the VM lifecycle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgtool.errors import Corrupt, NotFound
from imgtool.home import Home
from imgtool.names import check_name
from store import atomic

RECORD = "vm.json"
FORMAT = 1  # vm.json record format; imgtool.vm writes it


def load_records(home: Home) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    if not home.vms.is_dir():
        return records
    for path in sorted(home.vms.glob(f"*/{RECORD}")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a half-made VM has no record yet; vm list reports it
    return records


def vms_using(home: Home, gallery: str, definition: str, version: str) -> list[str]:
    image = f"{gallery}/{definition}@{version}"
    return [str(r["name"]) for r in load_records(home) if r.get("image") == image]


def roots(home: Home) -> dict[str, str]:
    """gc/verify roots held by VMs: label -> version record digest."""
    return {f"vm/{r['name']}": str(r["version_digest"]) for r in load_records(home) if "version_digest" in r}


def record_path(home: Home, name: str) -> Path:
    return home.vms / name / RECORD


def vm_dir(home: Home, name: str) -> Path:
    return home.vms / check_name(name, "VM")


def load(home: Home, name: str) -> dict[str, Any]:
    path = record_path(home, check_name(name, "VM"))
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise NotFound(f"VM '{name}' does not exist", hint="list VMs with imgtool vm list") from None
    except ValueError as exc:
        raise NotFound(f"VM '{name}' has an unreadable record: {exc}", hint="delete it with imgtool vm delete") from exc
    if not isinstance(record, dict) or record.get("kind") != "vm" or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise Corrupt(f"VM '{name}' has a record of format {found!r}; this imgtool reads format {FORMAT}",
                      hint="it was written by a newer imgtool: upgrade imgtool to use this VM")
    return record


def save(home: Home, record: dict[str, Any]) -> None:
    atomic.replace(record_path(home, record["name"]), json.dumps(record, indent=2, sort_keys=True).encode())
