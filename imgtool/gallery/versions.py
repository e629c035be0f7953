"""The `latest` rule (pure); version numbers themselves are `imgtool.names.Version`.

`latest` is the highest version not excluded from latest, not
revoked, and not held back by a boot check (pending or failed); the publish
date plays no part (as in Azure Compute Gallery).
"""

from __future__ import annotations

from dataclasses import dataclass

from imgtool.gallery.lifecycle_model import ELIGIBLE_STATES
from imgtool.names import Version


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


def why_nothing(verdicts: list[Verdict]) -> str:
    """Why `latest` picks nothing, for an error message: there are no versions, or each one's reason."""
    if not verdicts:
        return "it has no versions"
    return "every version is dropped: " + "; ".join(f"{v.version} {v.reason.removeprefix('dropped: ')}"
                                                    for v in verdicts)


def passed_over(verdicts: list[Verdict]) -> list[Verdict]:
    """The versions above the chosen one that `latest` dropped (all of them when none was chosen)."""
    chosen = next((v.version for v in verdicts if v.chosen), None)
    return [v for v in verdicts if not v.chosen and (chosen is None or v.version > chosen)]
