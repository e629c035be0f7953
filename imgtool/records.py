"""Strict loading of stored records: known format, known kind, no unknown fields, typed fields.

Pure module. A record written by a newer imgtool is refused with a hint instead of being misread, and
a record with a missing or mistyped field is `Corrupt` naming the record and the field, never an
internal error: records come from files anyone could have edited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from imgtool.errors import Corrupt, InvalidArgument

JsonObject = dict[str, Any]
T = TypeVar("T")
_NEWER = "it was written by a newer imgtool: upgrade imgtool to read it"
_DAMAGED = "the record is damaged; run imgtool verify"


def check_record(obj: Any, *, kind: str, fmt: int, fields: set[str], what: str,
                 formats: tuple[int, ...] = ()) -> JsonObject:
    """The record as a dict, once its kind, format and field names are known (`formats`: older ones read too)."""
    if not isinstance(obj, dict):
        raise Corrupt(f"{what} is not a JSON object", hint=_DAMAGED)
    if obj.get("kind") != kind:
        raise Corrupt(f"{what} is a {obj.get('kind')!r} record, expected {kind!r}", hint=_DAMAGED)
    if obj.get("format") not in (fmt, *formats) or isinstance(obj.get("format"), bool):
        raise Corrupt(f"{what} has record format {obj.get('format')!r}; this imgtool reads {fmt}", hint=_NEWER)
    unknown = set(obj) - fields - {"kind", "format", "links"}
    if unknown:
        raise Corrupt(f"{what} has unknown fields {sorted(unknown)}", hint=_NEWER)
    return obj


class Fields:
    """Typed access to one record's fields; each wrong or missing field is Corrupt with its name."""

    def __init__(self, obj: JsonObject, what: str) -> None:
        self.obj, self.what = obj, what

    def _bad(self, key: str, expected: str) -> Corrupt:
        found = "missing" if key not in self.obj else f"{type(self.obj[key]).__name__} {self.obj[key]!r}"[:80]
        return Corrupt(f"{self.what}: field '{key}' must be {expected} (found {found})", hint=_DAMAGED)

    def _get(self, key: str, ok: Callable[[Any], bool], expected: str, *, optional: bool) -> Any:
        value = self.obj.get(key)
        if value is None and optional:
            return None
        if not ok(value):
            raise self._bad(key, expected)
        return value

    def text(self, key: str) -> str:
        value: str = self._get(key, lambda v: isinstance(v, str), "a string", optional=False)
        return value

    def opt_text(self, key: str) -> str | None:
        value: str | None = self._get(key, lambda v: isinstance(v, str), "a string or null", optional=True)
        return value

    def text_or(self, key: str, default: str) -> str:
        value = self.opt_text(key)
        return default if value is None else value

    def integer(self, key: str) -> int:
        value: int = self._get(key, _is_int, "an integer", optional=False)
        return value

    def opt_integer(self, key: str) -> int | None:
        value: int | None = self._get(key, _is_int, "an integer or null", optional=True)
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        if key not in self.obj:
            return default
        value: bool = self._get(key, lambda v: isinstance(v, bool), "true or false", optional=False)
        return value

    def obj_or_empty(self, key: str) -> JsonObject:
        value: JsonObject | None = self._get(key, lambda v: isinstance(v, dict), "an object", optional=True)
        return {} if value is None else dict(value)

    def items(self, key: str, *, optional: bool = False) -> list[Any]:
        value: list[Any] | None = self._get(key, lambda v: isinstance(v, list), "a list", optional=optional)
        return [] if value is None else list(value)

    def texts(self, key: str) -> tuple[str, ...]:
        values = self.items(key, optional=True)
        if not all(isinstance(v, str) for v in values):
            raise self._bad(key, "a list of strings")
        return tuple(values)

    def text_map(self, key: str) -> tuple[tuple[str, str], ...]:
        value = self.obj_or_empty(key)
        if not all(isinstance(v, str) for v in value.values()):
            raise self._bad(key, "an object of strings")
        return tuple(sorted(value.items()))

    def each(self, key: str, parse: Callable[[JsonObject, str], T]) -> tuple[T, ...]:
        items = self.items(key)
        if not all(isinstance(item, dict) for item in items):
            raise self._bad(key, "a list of objects")
        return tuple(parse(item, f"{self.what} {key}[{i}]") for i, item in enumerate(items))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def build(what: str, make: Callable[[], T]) -> T:
    """Construct a record; a value its own rules refuse means the stored record is damaged."""
    try:
        return make()
    except InvalidArgument as exc:
        raise Corrupt(f"{what} holds a value imgtool refuses: {exc.message}", hint=_DAMAGED) from None

