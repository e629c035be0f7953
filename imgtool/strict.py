"""Strict reading of JSON a remote sent: size capped, no duplicate keys, exact fields, exact types.

The one strict-JSON kit: referrers, signatures, revocations, pins and the remote version format read
through it.

Pure module. Everything here raises Corrupt with `what` naming the document, so
a hostile registry's answer becomes one clear refusal, never an internal error.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from imgtool.errors import Corrupt

SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
_HINT = "the remote sent a malformed document: nothing was used or stored; tell the remote's owner"


def refuse(what: str, why: str) -> Corrupt:
    return Corrupt(f"{what} is malformed: {why}", hint=_HINT)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard number {name}")


def _no_fractions(text: str) -> Any:
    raise ValueError(f"fractional number {text[:40]}")


def load_object(data: bytes, *, what: str, limit: int, floats: bool = True) -> dict[str, Any]:
    """A JSON object of at most `limit` bytes (without any fractional number, unless `floats`)."""
    if len(data) > limit:
        raise refuse(what, f"{len(data)} bytes, above the {limit}-byte limit")
    try:
        obj = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants,
                         parse_float=None if floats else _no_fractions)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise refuse(what, f"not JSON ({str(exc)[:80]})") from exc
    if not isinstance(obj, dict):
        raise refuse(what, "not a JSON object")
    return obj


def exact(obj: dict[str, Any], *, what: str, required: set[str], optional: frozenset[str] = frozenset()) -> None:
    missing = required - set(obj)
    unknown = set(obj) - required - optional
    if missing:
        raise refuse(what, f"missing {sorted(missing)}")
    if unknown:
        raise refuse(what, f"unexpected fields {sorted(unknown)[:5]}")


def text(obj: dict[str, Any], key: str, *, what: str, pattern: re.Pattern[str] | None = None,
         limit: int = 1024) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > limit:
        raise refuse(what, f"{key} is not a string of at most {limit} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise refuse(what, f"{key} {value[:80]!r} has the wrong form")
    return value


def equal(obj: dict[str, Any], key: str, expected: object, *, what: str) -> None:
    if obj.get(key) != expected or type(obj.get(key)) is not type(expected):
        raise refuse(what, f"{key} is {str(obj.get(key))[:80]!r}, expected {expected!r}")


def count(obj: dict[str, Any], key: str, *, what: str, limit: int = 2**53) -> int:
    value = obj.get(key)
    if type(value) is not int or not 0 <= value <= limit:
        raise refuse(what, f"{key} is not an integer between 0 and {limit}")
    return value


def child(obj: dict[str, Any], key: str, *, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise refuse(what, f"{key} is not an object")
    return value


def b64(obj: dict[str, Any], key: str, *, what: str, limit: int) -> bytes:
    """Standard base64, canonical (re-encoding gives the same text), at most `limit` decoded bytes."""
    value = text(obj, key, what=what, limit=(limit + 2) // 3 * 4)
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise refuse(what, f"{key} is not base64") from exc
    if base64.b64encode(raw).decode() != value:
        raise refuse(what, f"{key} is not canonical base64")
    return raw
