"""Canonical JSON: one byte sequence per value, so equal records get equal digests.

Sorted keys, no insignificant whitespace, UTF-8, no NaN/Infinity, integers only
(floats are refused: a digest must not depend on float formatting).
"""

from __future__ import annotations

import json
from typing import Any

from store.errors import Corrupt, InvalidArgument

JsonObject = dict[str, Any]
_HINT = "a deep verify of the store shows what it affects"


def _check(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise InvalidArgument(f"float at {where} cannot be stored canonically", hint="use an integer")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"non-string key at {where}")
            _check(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(item, f"{where}[{i}]")


def dumps(value: JsonObject) -> bytes:
    _check(value, "$")
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def loads(data: bytes, *, what: str) -> JsonObject:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Corrupt(f"{what} is not valid JSON: {exc}", hint=_HINT) from exc
    if not isinstance(value, dict):
        raise Corrupt(f"{what} is not a JSON object", hint=_HINT)
    return value
