"""Validation of the names users type: galleries, definitions, VMs, snapshots, references, version numbers.

Rules are stated in the error so a user can fix the name without reading docs.
Pure module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imgtool.errors import InvalidArgument

MAX_NAME = 80
# Registry repository names as the OCI distribution spec defines them: the remote layer names each
# path component with the first (`x--` + base32 for names that are not components), and signatures
# check the repositories they bind with the second, so every repository imgtool pushes to can be signed.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
REPOSITORY_COMPONENT = re.compile(rf"^{_COMPONENT}$")
REPOSITORY_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
RULE = (f"1-{MAX_NAME} characters: letters, digits, '.', '_' and '-', starting and ending with a letter or "
        "digit, no '..'")


# A version is MAJOR.MINOR.PATCH, each an unsigned 32-bit integer written without leading zeros.
MAX_PART = 2**32 - 1
_VERSION_NUMBER = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_NUMBER.fullmatch(text)  # not match: `$` also matches before a final "\n"
        if not match:
            raise InvalidArgument(
                f"'{text.encode('unicode_escape').decode('ascii')}' is not a version",
                hint="write MAJOR.MINOR.PATCH, three non-negative integers without leading zeros, e.g. 1.2.0",
            )
        parts = tuple(int(g) for g in match.groups())
        if any(p > MAX_PART for p in parts):
            raise InvalidArgument(f"version '{text}' has a part above {MAX_PART}",
                                  hint="each part must fit in an unsigned 32-bit integer")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def ref_fields(label: str) -> dict[str, str]:
    """A version's reference as the JSON vocabulary spells it: "ref" (G/D@X.Y.Z) and its parts."""
    gallery, _, rest = label.partition("/")
    definition, _, version = rest.partition("@")
    return {"ref": label, "gallery": gallery, "definition": definition, "version": version}


def check_name(value: str, what: str) -> str:
    """Return `value` if it is a valid name for `what`, else raise InvalidArgument naming the rule."""
    printable = value.encode("unicode_escape").decode("ascii")
    if not value:
        raise InvalidArgument(f"{what} name is empty", hint=f"use {RULE}")
    if len(value) > MAX_NAME:
        raise InvalidArgument(f"{what} name '{printable[:40]}...' is {len(value)} characters long", hint=f"use {RULE}")
    if not _NAME.fullmatch(value) or ".." in value:  # fullmatch: `$` also matches before a final "\n"
        raise InvalidArgument(f"{what} name '{printable}' is not allowed", hint=f"use {RULE}")
    return value


@dataclass(frozen=True)
class DefinitionRef:
    gallery: str
    definition: str

    def __str__(self) -> str:
        return f"{self.gallery}/{self.definition}"


@dataclass(frozen=True)
class ImageRef:
    """GALLERY/DEFINITION[@VERSION|@latest]; version None means latest."""

    gallery: str
    definition: str
    version: Version | None

    @property
    def definition_ref(self) -> DefinitionRef:
        return DefinitionRef(self.gallery, self.definition)

    def __str__(self) -> str:
        suffix = f"@{self.version}" if self.version else "@latest"
        return f"{self.gallery}/{self.definition}{suffix}"


def parse_definition_ref(text: str) -> DefinitionRef:
    parts = text.split("/")
    if len(parts) != 2:
        raise InvalidArgument(f"'{text}' is not GALLERY/DEFINITION", hint="for example: team/base")
    return DefinitionRef(check_name(parts[0], "gallery"), check_name(parts[1], "definition"))


def parse_image_ref(text: str, *, require_version: bool = False) -> ImageRef:
    base, sep, version = text.partition("@")
    ref = parse_definition_ref(base)
    if not sep or version == "latest":
        if require_version:
            raise InvalidArgument(f"'{text}' does not name a version", hint="write GALLERY/DEFINITION@X.Y.Z")
        return ImageRef(ref.gallery, ref.definition, None)
    return ImageRef(ref.gallery, ref.definition, Version.parse(version))
