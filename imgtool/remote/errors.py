"""The error a remote adds to imgtool's categories: it could not be reached or kept failing."""

from __future__ import annotations

from imgtool.errors import ImgtoolError


class RemoteFailed(ImgtoolError):
    """The registry could not be reached, or kept failing after bounded retries."""

    exit_code = 12
    category = "remote-failed"


class TransferBroken(RemoteFailed):
    """A body broke off mid-transfer (reset, closed): the request may succeed if sent again."""


class TransferInterrupted(ImgtoolError):
    """Ctrl-C during a push or pull: what was kept, and that the same command resumes."""

    exit_code = 130
    category = "interrupted"
