"""The time, digest and signed name the trust unit tests sign and check."""

from __future__ import annotations

from datetime import UTC, datetime

from imgtool.trust import signatures as sig

WHEN = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
NAME = sig.SignedName("127.0.0.1:5000", "img/team/base", "team", "base", "1.0.0")
