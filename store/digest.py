"""BLAKE3 digests: how bytes get their names, and how names are validated.

A digest is written `blake3:<64 lowercase hex>` wherever a user or a manifest
sees it; paths use the bare hex. Nothing becomes a path without `parse` first.
"""

from __future__ import annotations

import re

import blake3

from store.errors import InvalidArgument

PREFIX = "blake3:"
_HEX = re.compile(r"^[0-9a-f]{64}$")


def of(data: bytes | memoryview) -> str:
    """The full digest string of `data`."""
    return PREFIX + blake3.blake3(data).hexdigest()


def hex_of(data: bytes | memoryview) -> str:
    return str(blake3.blake3(data).hexdigest())


def parse(text: str) -> str:
    """Validate a digest (`blake3:<hex>` or bare hex) and return its bare hex.

    Raises InvalidArgument for anything else, so a hostile string never reaches
    a path join.
    """
    bare = text[len(PREFIX):] if text.startswith(PREFIX) else text
    if not _HEX.fullmatch(bare):  # not match: `$` also matches before a final "\n"
        raise InvalidArgument(
            f"{text!r} is not a digest",
            hint="a digest is blake3: followed by 64 lowercase hex digits, as printed when it was stored",
        )
    return bare


def full(hex_digest: str) -> str:
    return PREFIX + parse(hex_digest)


def looks_like(text: str) -> bool:
    bare = text[len(PREFIX):] if text.startswith(PREFIX) else None
    return bare is not None and bool(_HEX.fullmatch(bare))
