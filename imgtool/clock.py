"""The one clock: every time imgtool records or compares is read here, so code under test takes the
time as an argument instead of depending on the day it runs. Pure module.

Records store UTC at second precision, written `YYYY-MM-DDTHH:MM:SSZ`; dates users type are
`YYYY-MM-DD` (the start of that day, UTC).

File ages (capture leases, cold packs, racy caches) are not measured with this clock but with the
file system's own (`store.fsclock`): mtimes come from whatever clock stamped the file.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from imgtool.errors import InvalidArgument

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def now() -> datetime:
    """The current time, UTC, whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


def stamp(when: datetime | None = None) -> str:
    """`when` (default: now) as a record writes it: `2027-01-31T12:00:00Z`."""
    return (now() if when is None else when).astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def today(when: datetime | None = None) -> str:
    """The UTC date of `when` (default: now), `2027-01-31`: what end-of-life dates are compared with."""
    day: date = (now() if when is None else when).astimezone(UTC).date()
    return day.isoformat()


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
