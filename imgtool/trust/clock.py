"""Times in trust records: UTC, second precision, written `YYYY-MM-DDTHH:MM:SSZ`. Pure module."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from imgtool.errors import InvalidArgument

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, what: str) -> datetime:
    """A date (`2027-01-31`, meaning its start, UTC) or a stamp (`2027-01-31T12:00:00Z`)."""
    if _DATE.fullmatch(text):
        text = f"{text}T00:00:00Z"
    if not _STAMP.fullmatch(text):
        raise InvalidArgument(f"{what} '{text[:40]}' is not a date",
                              hint="write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidArgument(f"{what} '{text}' is not a real date", hint="write YYYY-MM-DD (UTC)") from exc
