"""A damaged chunk can be healed: verify --repair sets it aside, and capturing the same bytes again
stores a good copy (dedup would otherwise keep the damaged one for ever)."""

from __future__ import annotations

import os
from pathlib import Path

from imgtool import maintenance
from imgtool.flows.publishing import publish_version as publish
from imgtool.gallery import galleries
from imgtool.gallery.image_versions import PublishRequest, export
from imgtool.gallery.model import Definition
from imgtool.home import Home
from imgtool.names import DefinitionRef, Version
from store.ingest import ingest
from store.packs import iter_index_files

CHUNK = 128 * 1024


def _ingest(home: Home, data: bytes) -> str:
    with home.store.writing():
        return ingest(home.store, virtual_size=len(data), read=lambda o, n: data[o:o + n],
                      indexes=range(len(data) // CHUNK)).digest


def _flip_first_frame(home: Home) -> None:
    index = next(iter_index_files(home.store.layout))
    pack = index.with_suffix(".pack")
    pack.chmod(0o644)
    with open(pack, "r+b") as handle:
        handle.seek(40)
        byte = handle.read(1)
        handle.seek(40)
        handle.write(bytes([byte[0] ^ 0xFF]))


def test_repair_sets_a_damaged_chunk_aside_and_a_recapture_restores_it(tmp_path: Path) -> None:
    home = Home.at(tmp_path / "home")
    galleries.create_gallery(home, "team")
    galleries.create_definition(home, Definition("team", "base", "acme", "base", "v1", "linux", "generalized"))
    data = os.urandom(4 * CHUNK)
    disk = _ingest(home, data)
    # Random bytes, no guest OS the audit can read: published with the override.
    publish(home, PublishRequest(DefinitionRef("team", "base"), Version.parse("1.0.0"), os_disk=disk,
                                 allow_unaudited=True))
    _flip_first_frame(home)

    report, hit = maintenance.verify(home, deep=True)
    assert not report.ok and hit["versions"] == ["team/base@1.0.0"]
    assert _ingest(home, data) == disk  # plain dedup: the damaged copy stays ...
    assert not maintenance.verify(home, deep=True)[0].ok  # ... and the store is still damaged

    aside = maintenance.set_aside_damaged(home, report)
    assert len(aside) == 1
    after, hit = maintenance.verify(home, deep=True)
    assert not after.ok and hit["versions"] == ["team/base@1.0.0"]  # now missing, not wrong
    assert maintenance.set_aside_damaged(home, after) == []  # nothing damaged is left to set aside

    assert _ingest(home, data) == disk  # the same bytes again: the missing chunk is stored afresh
    healed, _ = maintenance.verify(home, deep=True)
    assert healed.ok, healed.problems
    out = tmp_path / "out.raw"
    export(home, "team/base@1.0.0", out, fmt="raw")
    assert out.read_bytes() == data
