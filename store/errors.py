"""Typed errors of the store, which the imgtool domain reuses as its own categories.

The library raises; only the CLI speaks. Every error carries what failed (the
message) and what to do about it (the hint). Each category maps to one stable
exit code so scripts can tell "not found" from "corrupt" without parsing text.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises; each subclass is one category with a stable exit code."""

    exit_code = 1
    category = "error"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InvalidArgument(StoreError):
    """The user asked for something malformed or contradictory."""

    exit_code = 2
    category = "invalid-argument"


class NotFound(StoreError):
    exit_code = 3
    category = "not-found"


class AlreadyExists(StoreError):
    exit_code = 4
    category = "already-exists"


class Refused(StoreError):
    """A well-formed request that the rules forbid (in use, policy, unsafe image)."""

    exit_code = 5
    category = "refused"


class UnsafeImage(Refused):
    """An image failed inspection: it could read host files or exhaust resources."""

    category = "unsafe-image"


class Corrupt(StoreError):
    """Stored data does not match its digest or cannot be parsed."""

    exit_code = 6
    category = "corrupt"


class Locked(StoreError):
    exit_code = 7
    category = "locked"


class ToolMissing(StoreError):
    exit_code = 8
    category = "tool-missing"


class ToolFailed(StoreError):
    exit_code = 9
    category = "tool-failed"

    def __init__(self, message: str, *, hint: str = "", argv: list[str] | None = None,
                 returncode: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class StorageFull(StoreError):
    exit_code = 10
    category = "storage-full"


class ReadOnlyStore(StoreError):
    exit_code = 11
    category = "read-only"
