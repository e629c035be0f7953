"""Who uses a version: the VMs standing on it and the versions captured from it, transitively (local).

Provenance is read from each version's disks: a disk captured from a VM or snapshot names the version
that VM stood on (`parent_version`), a disk copied from a version names it (`kind: version`, `name`).
Versions are matched by name (G/D@X.Y.Z): every record a name ever had is the same content.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from imgtool.gallery.galleries import VERSIONS
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import ImageVersion
from imgtool.home import Home
from imgtool.vm import record as vmrecord


@dataclass
class Users:
    version: str
    vms: list[dict[str, str]] = field(default_factory=list)  # name, image (the root or a descendant)
    versions: list[dict[str, str]] = field(default_factory=list)  # version, parent

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "vms": self.vms, "versions": self.versions}


def parents(version: ImageVersion) -> set[str]:
    """The versions a version's disks were captured or copied from."""
    found = set()
    for disk in version.disks:
        source = disk.source
        if isinstance(source.get("parent_version"), str):
            found.add(source["parent_version"])
        if source.get("kind") == "version" and isinstance(source.get("name"), str):
            found.add(source["name"])
    found.discard(version.label)
    return found


def _children(home: Home) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for _key, digest in home.store.list_names(VERSIONS):
        version = ImageVersion.from_json(home.store.get_manifest(digest))
        for parent in parents(version):
            children.setdefault(parent, []).append(version.label)
    return children


def users(home: Home, text: str) -> Users:
    """The VMs and versions that come from G/D@X.Y.Z (directly or through descendants)."""
    root, _ = get_version(home, text)
    found = Users(root.label)
    children = _children(home)
    via: dict[str, str] = {root.label: root.label}
    queue = deque([root.label])
    while queue:
        label = queue.popleft()
        for child in sorted(children.get(label, [])):
            if child not in via:
                via[child] = label
                found.versions.append({"version": child, "parent": label})
                queue.append(child)
    for record in vmrecord.load_records(home):
        if record.image in via:
            found.vms.append({"name": record.name, "image": record.image})
    return found
