"""Remote references, pinned or not: `REMOTE:G/D[@X.Y.Z|@latest][@sha256:HEX]`. Pure module.

A pinned reference names the manifest digest the user expects. The pull's check
(imgtool.flows.sharing) compares it with the manifest the remote serves for that
tag, before anything is stored and on cache hits too; a mismatch is an error,
never a reason to use something else.
"""

from __future__ import annotations

from dataclasses import dataclass

from imgtool import strict
from imgtool.errors import InvalidArgument, Refused
from imgtool.names import Version, check_name, parse_definition_ref

_FORM = "REMOTE:GALLERY/DEFINITION[@X.Y.Z[@sha256:HEX]]"


@dataclass(frozen=True)
class RemoteRef:
    remote: str
    gallery: str
    definition: str
    version: Version | None  # None: latest
    digest: str | None  # the pin

    def __str__(self) -> str:
        text = f"{self.remote}:{self.gallery}/{self.definition}@{self.version or 'latest'}"
        return f"{text}@{self.digest}" if self.digest else text


def parse_remote_ref(text: str) -> RemoteRef:
    remote, sep, rest = text.partition(":")
    if not sep:
        raise InvalidArgument(f"'{text}' does not name a remote", hint=f"write {_FORM}")
    check_name(remote, "remote")
    base, _, tail = rest.partition("@")
    ref = parse_definition_ref(base)
    version_text, _, digest = tail.partition("@")
    if digest and not strict.SHA256.fullmatch(digest):
        raise InvalidArgument(f"'{digest[:80]}' is not a sha256 digest", hint=f"write {_FORM}")
    if digest and version_text in ("", "latest"):
        raise InvalidArgument("a pinned digest needs an exact version", hint=f"write {_FORM}")
    version = Version.parse(version_text) if version_text not in ("", "latest") else None
    return RemoteRef(remote, ref.gallery, ref.definition, version, digest or None)


def check_pin(ref: RemoteRef, actual_digest: str, *, where: str) -> None:
    """Raise Refused unless `actual_digest` (what `where` holds for `ref`) is the pinned one."""
    if ref.digest is not None and actual_digest != ref.digest:
        raise Refused(f"{ref.remote}:{ref.gallery}/{ref.definition}@{ref.version} is pinned to {ref.digest[:19]}… "
                      f"but {where} has {actual_digest[:19]}…",
                      hint="the version changed under the same name: nothing was used. If the new content is "
                           "intended, pin the new digest explicitly; otherwise ask the remote's owner")
