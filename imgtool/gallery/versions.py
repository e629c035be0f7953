"""Image version numbers and the `latest` rule (pure).

A version is MAJOR.MINOR.PATCH, each an unsigned 32-bit integer written without
leading zeros. `latest` is the highest version not excluded from latest, not
revoked, and not held back by a boot check (pending or failed); the publish
date plays no part (as in Azure Compute Gallery).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from imgtool.errors import InvalidArgument
from imgtool.gallery.lifecycle_model import ELIGIBLE_STATES

MAX_PART = 2**32 - 1
_VERSION = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION.fullmatch(text)  # not match: `$` also matches before a final "\n"
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


@dataclass(frozen=True)
class Candidate:
    version: Version
    exclude_from_latest: bool
    end_of_life: str | None = None
    check: str | None = None  # boot check state; None: no check required
    revoked: str | None = None  # the revocation's reason

    @property
    def eligible(self) -> bool:
        return not self.exclude_from_latest and self.check in ELIGIBLE_STATES and self.revoked is None


@dataclass(frozen=True)
class Verdict:
    version: Version
    chosen: bool
    reason: str


def resolve_latest(candidates: list[Candidate], *, today: str | None = None) -> tuple[Version | None, list[Verdict]]:
    """Pick `latest` and explain every candidate, highest version first.

    End of life is informational (as in Azure): it is reported, not a reason to drop.
    """
    ordered = sorted(candidates, key=lambda c: c.version, reverse=True)
    winner = next((c.version for c in ordered if c.eligible), None)
    verdicts = [Verdict(c.version, c.version == winner, _reason(c, winner, today)) for c in ordered]
    return winner, verdicts


def _reason(c: Candidate, winner: Version | None, today: str | None) -> str:
    eol = ""
    if c.end_of_life and today and c.end_of_life[:10] < today:
        eol = f"; past its end of life {c.end_of_life[:10]} (informational)"
    if c.revoked is not None:
        return f"dropped: revoked ({c.revoked})" + eol
    if c.exclude_from_latest:
        return "dropped: excluded from latest" + eol
    if c.check == "pending":
        return "dropped: boot check pending (imgtool version check)" + eol
    if c.check == "failed":
        return "dropped: boot check failed (check again, or version update --promote)" + eol
    if c.version == winner:
        return "chosen: highest eligible version" + eol
    return f"kept out: {winner} is higher" + eol
