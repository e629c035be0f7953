"""docs/STORE-FORMAT.md against the frozen format-1 fixture store and the code's constants.

The tables of the document are parsed; every file of fixtures/stores/format1/store must have
exactly the documented fields with the documented types, the index bytes must add up to the
documented sizes, and the encodings table must be the code's. A change to the format that
forgets the document (or the other way round) fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import blake3

from store import codec
from store.digest import looks_like
from store.packs import ENTRY, ENTRY_V1, HEAD, MAGIC_V1, decode_index

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "STORE-FORMAT.md").read_text()
FIXTURE = ROOT / "fixtures" / "stores" / "format1" / "store"


def section(heading: str) -> str:
    """The text under a markdown heading, up to the next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\n", DOC, re.M)
    assert match, f"STORE-FORMAT.md has no heading {heading!r}"
    level = len(match.group(1))
    rest = DOC[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def table(heading: str, nth: int = 0) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the nth table under a heading, without its header."""
    tables: list[list[list[str]]] = [[]]
    for line in section(heading).splitlines():
        if line.startswith("|"):
            tables[-1].append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
        elif tables[-1]:
            tables.append([])
    rows = [t for t in tables if t][nth]
    return rows[2:]  # without the header and the |---| line


def fields(heading: str) -> dict[str, str]:
    return {row[0]: row[1] for row in table(heading)}


def has_type(value: Any, documented: str) -> bool:
    checks = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "string": lambda v: isinstance(v, str),
              "list": lambda v: isinstance(v, list), "digest or null": lambda v: v is None or looks_like(v)}
    assert documented in checks, f"undocumented type {documented!r}"
    return bool(checks[documented](value))


def check_object(obj: dict[str, Any], documented: dict[str, str], what: str) -> None:
    assert set(obj) == set(documented), f"{what}: fields {sorted(obj)} != documented {sorted(documented)}"
    for key, kind in documented.items():
        assert has_type(obj[key], kind), f"{what}: {key}={obj[key]!r} is not {kind}"


def test_store_json_has_the_documented_fields() -> None:
    check_object(json.loads((FIXTURE / "store.json").read_bytes()), fields("store.json"), "store.json")


def test_disk_manifests_have_the_documented_fields() -> None:
    disks = [json.loads(p.read_bytes()) for p in sorted((FIXTURE / "manifests").glob("*/*"))]
    disks = [d for d in disks if d.get("kind") == "disk"]
    assert len(disks) == 2
    for disk in disks:
        check_object(disk, fields("Disk manifest"), "disk manifest")
        assert all(isinstance(i, int) and re.fullmatch("[0-9a-f]{64}", h) for i, h in disk["chunks"])
        assert disk["chunks"] == sorted(disk["chunks"])


def test_manifests_are_canonical_and_named_by_their_digest() -> None:
    for path in sorted((FIXTURE / "manifests").glob("*/*")):
        data = path.read_bytes()
        assert blake3.blake3(data).hexdigest() == path.name and path.parent.name == path.name[:2]
        assert json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode() == data


def test_names_and_the_name_log_are_as_documented() -> None:
    for path in sorted(p for p in (FIXTURE / "names").rglob("*") if p.is_file()):
        text = path.read_text()
        assert text.endswith("\n") and text.count("\n") == 1 and looks_like(text.strip()), path
    documented = fields("log/names.log")
    lines = (FIXTURE / "log" / "names.log").read_text().splitlines()
    assert lines
    for line in lines:
        check_object(json.loads(line), documented, "names.log line")
        assert json.loads(line)["action"] in ("set", "delete")


def test_index_bytes_add_up_to_the_documented_sizes() -> None:
    header = table("Index format 2 (written since the fast ingest codec, see Format history)", 0)
    entry = table("Index format 2 (written since the fast ingest codec, see Format history)", 1)
    head_bytes = [int(r[0]) for r in header if r[0].isdigit()]
    assert head_bytes == [8, 32, 4, 32]  # magic, pack, count ... checksum
    assert HEAD.size == sum(head_bytes[:3])
    per_entry = re.search(r"count x (\d+)", str(header))
    assert per_entry and ENTRY.size == sum(int(r[0]) for r in entry) == int(per_entry.group(1))
    v1 = re.search(r"entries of (\d+) bytes", section("Index format 1 (written before; still read)"))
    assert v1 and ENTRY_V1.size == int(v1.group(1))
    indexes = sorted((FIXTURE / "packs").glob("*/*.idx"))
    assert indexes
    for path in indexes:
        data = path.read_bytes()
        assert data[:8] == MAGIC_V1 and blake3.blake3(data[:-32]).digest() == data[-32:]
        count = int.from_bytes(data[40:44], "little")
        assert len(data) == HEAD.size + count * ENTRY_V1.size + 32
        pack_hex, entries = decode_index(data, what=path.name)
        assert pack_hex == path.stem and data[8:40].hex() == pack_hex
        pack = path.with_suffix(".pack").read_bytes()
        assert blake3.blake3(pack).hexdigest() == pack_hex  # a pack is named by its bytes
        assert sum(e.clen for e in entries) == len(pack) and all(e.encoding == codec.ZSTD for e in entries)


def test_the_encodings_table_is_the_codes() -> None:
    documented = {int(row[0]): row[1] for row in table("Frame encodings")}
    assert documented == codec.ENCODINGS


def test_the_fixture_holds_only_what_the_layout_tree_lists() -> None:
    tree = section("Layout")
    top = {p.name for p in FIXTURE.iterdir()}
    for name in top:
        assert re.search(rf"^  {re.escape(name)}[/ ]", tree, re.M), f"{name} is not in the layout tree"
