"""Records of a version's lifecycle: boot-check settings and results, revocations, soft deletes (pure).

A definition's `boot_check` says how to prove a version boots; a version's `check` is the latest
result (a publishing setting like exclude_from_latest: changing it writes a new record and moves the
name, the content never changes). A `DeletedRecord` is what a soft-deleted gallery, definition or
version's name points at while it is kept: it links the record it hides, so gc keeps that data
until the retention period is over.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from imgtool.errors import InvalidArgument
from imgtool.records import Fields, JsonObject, build, check_record
from imgtool.vocab import values


class CheckKind(StrEnum):
    SSH = "ssh"  # ssh -o BatchMode=yes ... true
    CLOUD_INIT = "cloud-init"  # cloud-init status --wait, over ssh
    CONSOLE = "console"  # a serial console line containing a text


class CheckState(StrEnum):
    PENDING = "pending"  # published into a definition that requires a check, not checked yet
    PASSED = "passed"
    FAILED = "failed"
    PROMOTED = "promoted"  # let into latest by hand (version update --promote)


CHECK_KINDS = values(CheckKind)
CHECK_STATES = values(CheckState)
ELIGIBLE_STATES = (None, CheckState.PASSED, CheckState.PROMOTED)  # which check states `latest` may pick
DEFAULT_BOOT_TIMEOUT = 300
MAX_BOOT_TIMEOUT = 24 * 3600
MAX_TAIL = 4096  # console tail kept in a failed check's record
MAX_REASON = 1024
DELETED_FORMAT = 1
DELETED_KINDS = ("gallery", "definition", "version")


def _positive_timeout(value: int) -> int:
    if not 0 < value <= MAX_BOOT_TIMEOUT:
        raise InvalidArgument(f"boot timeout {value} is out of range", hint=f"give 1..{MAX_BOOT_TIMEOUT} seconds")
    return value


@dataclass(frozen=True)
class BootCheck:
    """How a definition's versions prove they boot: `ssh`, `cloud-init` or `console` (a line with `text`)."""

    kind: str = "ssh"
    text: str | None = None
    timeout: int = DEFAULT_BOOT_TIMEOUT

    def __post_init__(self) -> None:
        if self.kind not in CHECK_KINDS:
            raise InvalidArgument(f"boot check '{self.kind}' is not one of ssh, cloud-init, console:TEXT",
                                  hint="e.g. --boot-check ssh or --boot-check console:READY")
        if (self.kind == "console") != bool(self.text):
            raise InvalidArgument("a console boot check needs the text to wait for, and only it has one",
                                  hint="write --boot-check console:TEXT, e.g. console:login:")
        if self.text is not None and (len(self.text) > 200 or not self.text.isprintable()):
            raise InvalidArgument("the console text to wait for must be 1-200 printable characters",
                                  hint="e.g. --boot-check console:READY")
        _positive_timeout(self.timeout)

    @classmethod
    def parse(cls, text: str, timeout: int = DEFAULT_BOOT_TIMEOUT) -> BootCheck:
        """`ssh`, `cloud-init` or `console:TEXT` as typed on the command line."""
        kind, sep, wanted = text.partition(":")
        return cls(kind, wanted if sep else None, timeout)

    def describe(self) -> str:
        return f"console:{self.text}" if self.kind == "console" else self.kind

    def to_json(self) -> JsonObject:
        return {"kind": self.kind, "text": self.text, "timeout": self.timeout}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> BootCheck:
        f = Fields(obj, what)
        return build(what, lambda: cls(f.text("kind"), f.opt_text("text"), f.integer("timeout")))


@dataclass(frozen=True)
class CheckResult:
    """The latest boot check of a version. `promoted`: a person let a failed or pending one into latest."""

    state: str
    kind: str | None = None  # the check that ran (ssh, cloud-init, console:TEXT)
    when: str | None = None
    duration_ms: int | None = None  # integers only: records are canonical JSON without floats
    detail: str | None = None  # why it failed, or who promoted it and why
    console_tail: str | None = None

    def __post_init__(self) -> None:
        if self.state not in CHECK_STATES:
            raise InvalidArgument(f"check state '{self.state}' is not one of {', '.join(CHECK_STATES)}",
                                  hint="this is a bug")

    @property
    def eligible(self) -> bool:
        return self.state in ELIGIBLE_STATES

    def describe(self) -> str:
        parts = [self.state]
        if self.kind:
            parts.append(f"({self.kind})")
        if self.when:
            parts.append(f"at {self.when}")
        if self.duration_ms is not None:
            parts.append(f"in {self.duration_ms / 1000:.1f}s")
        if self.detail:
            parts.append(f"- {self.detail}")
        return " ".join(parts)

    def to_json(self) -> JsonObject:
        return {"state": self.state, "kind": self.kind, "when": self.when, "duration_ms": self.duration_ms,
                "detail": self.detail, "console_tail": self.console_tail}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> CheckResult:
        f = Fields(obj, what)
        return build(what, lambda: cls(f.text("state"), f.opt_text("kind"), f.opt_text("when"),
                                       f.opt_integer("duration_ms"), f.opt_text("detail"),
                                       f.opt_text("console_tail")))


@dataclass(frozen=True)
class Revocation:
    reason: str
    when: str

    def __post_init__(self) -> None:
        if not self.reason.strip() or len(self.reason) > MAX_REASON:
            raise InvalidArgument("a revocation needs a reason of 1-1024 characters",
                                  hint="say why, e.g. --reason 'CVE-2026-1234 in openssl'")

    def to_json(self) -> JsonObject:
        return {"reason": self.reason, "when": self.when}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> Revocation:
        f = Fields(obj, what)
        return build(what, lambda: cls(f.text("reason"), f.text("when")))


@dataclass(frozen=True)
class DeletedRecord:
    """What `deleted/<kind>/<key>` names: the hidden record, when it was deleted, when it may be purged."""

    kind: str  # gallery | definition | version
    label: str  # G, G/D or G/D@X.Y.Z
    record: str  # digest of the gallery/definition/version record it hides
    deleted_at: str
    purge_after: str

    FIELDS = frozenset({"deleted_kind", "label", "record", "deleted_at", "purge_after"})

    def __post_init__(self) -> None:
        if self.kind not in DELETED_KINDS:
            raise InvalidArgument(f"deleted kind '{self.kind}' is unknown", hint="this is a bug")
        parse_time(self.deleted_at, "deleted_at")
        parse_time(self.purge_after, "purge_after")

    def to_json(self) -> JsonObject:
        return {"format": DELETED_FORMAT, "kind": "deleted", "links": [self.record], "deleted_kind": self.kind,
                "label": self.label, "record": self.record, "deleted_at": self.deleted_at,
                "purge_after": self.purge_after}

    @classmethod
    def from_json(cls, obj: JsonObject) -> DeletedRecord:
        what = "deleted record"
        f = Fields(check_record(obj, kind="deleted", fmt=DELETED_FORMAT, fields=set(cls.FIELDS), what=what), what)
        return build(what, lambda: cls(f.text("deleted_kind"), f.text("label"), f.text("record"),
                                       f.text("deleted_at"), f.text("purge_after")))


def parse_time(value: str, what: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"{what} '{value}' is not a date-time", hint="write ISO 8601") from None
    if parsed.tzinfo is None:
        raise InvalidArgument(f"{what} '{value}' has no time zone", hint="write ISO 8601 with Z")
    return parsed


def tail(text: str, limit: int = MAX_TAIL) -> str:
    """The end of a console log, cut at a line start, printable enough for a record."""
    cut = text[-limit:]
    if len(text) > limit and "\n" in cut:
        cut = cut.split("\n", 1)[1]
    return cut

