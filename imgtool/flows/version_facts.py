"""What `version show --json` adds to a version's shape: its replication per target, its warm states and
its boot profile. Written once here for the CLI and the web view, which must never disagree."""

from __future__ import annotations

from typing import Any

from imgtool.errors import Corrupt
from imgtool.flows import replication
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.vm import boot_profile, warm_state


def facts(home: Home, version: ImageVersion, record: str) -> dict[str, Any]:
    """The keys `replication`, `warm` and `boot_profile` of the version whose record is `record`."""
    return {"replication": replication.describe(home, version.gallery, version.definition, version.version),
            "warm": [found.to_json() for found in warm_state.list_for(home, record)],
            "boot_profile": profile(home, version)}


def profile(home: Home, version: ImageVersion) -> dict[str, Any] | None:
    """How many chunks the version's boot profile orders, per disk; None without one. A damaged profile
    is shown as such (a stream ignores it), never hides the version."""
    try:
        found = boot_profile.load(home.store, version.gallery, version.definition, version.version)
    except Corrupt as exc:
        return {"chunks": 0, "disks": [], "problem": exc.message}
    if found is None:
        return None
    return {"chunks": found.size, "disks": [{"disk": d.disk, "chunks": len(d.chunks)} for d in found.disks],
            "problem": None}
