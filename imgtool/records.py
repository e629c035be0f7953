"""Strict loading of stored records: known format, known kind, no unknown fields.

Pure module. A record written by a newer imgtool is refused with a hint instead
of being misread.
"""

from __future__ import annotations

from typing import Any

from imgtool.errors import Corrupt

JsonObject = dict[str, Any]


def check_record(obj: JsonObject, *, kind: str, fmt: int, fields: set[str], what: str) -> JsonObject:
    if obj.get("kind") != kind:
        raise Corrupt(f"{what} is a {obj.get('kind')!r} record, expected {kind!r}", hint="run imgtool verify")
    if obj.get("format") != fmt:
        raise Corrupt(f"{what} has record format {obj.get('format')!r}; this imgtool reads {fmt}",
                      hint="it was written by a newer imgtool: upgrade imgtool to read it")
    unknown = set(obj) - fields - {"kind", "format", "links"}
    if unknown:
        raise Corrupt(f"{what} has unknown fields {sorted(unknown)}",
                      hint="it was written by a newer imgtool: upgrade imgtool to read it")
    return obj


def opt_str(obj: JsonObject, key: str) -> str | None:
    value = obj.get(key)
    return None if value is None else str(value)
