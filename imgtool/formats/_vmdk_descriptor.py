"""A strict parser for VMDK text descriptors.

Only four kinds of line exist: blank, `#` comment, `key = value` (this covers
the `ddb.*` disk database) and extent lines starting RW, RDONLY or NOACCESS.
Anything else makes the descriptor invalid, so no line can hide something
another parser (qemu's sscanf, VMware's) would read differently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_KEY_VALUE = re.compile(r'([A-Za-z][A-Za-z0-9_.-]*)[ \t]*=[ \t]*(?:"([^"\x00-\x1f]*)"|([^\s"]+))')
_EXTENT = re.compile(r'(RW|RDONLY|NOACCESS)[ \t]+(\d+)[ \t]+([A-Z]+)[ \t]+"([^"\x00-\x1f]*)"(?:[ \t]+(\d+))?')
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class DescriptorError(ValueError):
    """The descriptor text is not in the strict form we accept."""


@dataclass(frozen=True)
class Extent:
    access: str
    sectors: int
    kind: str
    filename: str


@dataclass(frozen=True)
class Descriptor:
    entries: dict[str, str]
    extents: tuple[Extent, ...]


def parse(text: bytes) -> Descriptor:
    """Parse descriptor bytes (already cut at the first NUL); raise DescriptorError."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DescriptorError(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    entries: dict[str, str] = {}
    extents: list[Extent] = []
    for number, raw in enumerate(decoded.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if _CONTROL.search(line):
            raise DescriptorError(f"has control characters on line {number}")
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        if extent := _EXTENT.fullmatch(line):
            access, sectors, kind, filename, _offset = extent.groups()
            extents.append(Extent(access, int(sectors), kind, filename))
        elif pair := _KEY_VALUE.fullmatch(line):
            key, quoted, bare = pair.groups()
            if key in entries:
                raise DescriptorError(f"sets {key!r} twice (line {number})")
            entries[key] = quoted if quoted is not None else bare
        else:
            raise DescriptorError(f"has an unexpected line {number}: {line[:80]!r}")
    return Descriptor(entries, tuple(extents))


def extent_names(text: bytes) -> list[str]:
    """Best-effort list of the files a (possibly malformed) descriptor names, for messages."""
    decoded = text.decode("utf-8", "backslashreplace")
    return re.findall(r'(?m)^[ \t]*(?:RW|RDONLY|NOACCESS)[ \t]+\d+[ \t]+\w+[ \t]+"([^"\n]*)"', decoded)


def create_type(text: bytes) -> str:
    found = re.search(rb'createType[ \t]*=[ \t]*"([^"\n]*)"', text)
    return found.group(1).decode("utf-8", "backslashreplace") if found else "?"
