"""The lineage facts of every version in a home, read once per record and remembered.

A version record never changes (a new record moves the name), so its facts are remembered by record
digest: after the first request only the names are listed again, and only records not seen before
are read. The list of records comes from the version index (imgtool/web/views.py, every_version).
"""

from __future__ import annotations

import threading

from imgtool.gallery.model import ImageVersion
from imgtool.gallery.users import parents
from imgtool.home import Home
from imgtool.vm.record import load_records
from imgtool.web.lineage import VersionFact, VmFact

MAX_REMEMBERED = 200_000


def version_fact(version: ImageVersion) -> VersionFact:
    pulled = version.pulled_from
    via = tuple(sorted({str(d.source["name"]) for d in version.disks
                        if d.source.get("kind") in ("vm", "snapshot") and isinstance(d.source.get("name"), str)}))
    return VersionFact(version.label, tuple(sorted(parents(version))), via,
                       pulled.remote if pulled else None, pulled.manifest if pulled else None,
                       version.revocation.reason if version.revocation else None)


class FactMemo:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._facts: dict[str, VersionFact] = {}

    def versions(self, home: Home, records: list[str]) -> list[VersionFact]:
        """The facts of these version records (read only the first time a record is seen)."""
        found = []
        for record in records:
            with self._lock:
                fact = self._facts.get(record)
            if fact is None:
                fact = version_fact(ImageVersion.from_json(home.store.get_manifest(record)))
                with self._lock:
                    if len(self._facts) >= MAX_REMEMBERED:
                        self._facts.clear()
                    self._facts[record] = fact
            found.append(fact)
        return found


def vm_facts(home: Home) -> list[VmFact]:

    return [VmFact(r.name, r.image) for r in load_records(home)]
