"""Unix socket paths: one length limit and one private folder for sockets that cannot live where they belong.

A home can be deep enough that `<home>/vms/NAME/qmp.sock` does not fit sun_path. Such sockets go to
/tmp/imgtool-<uid>/, which must be ours alone: a folder another user made there first (or a symlink)
would let them intercept the socket, so it is refused rather than used.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from imgtool.errors import InvalidArgument, Refused
from imgtool.vocab import MAX_SOCKET_PATH


def fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


def check(path: Path, what: str) -> Path:
    if not fits(path):
        raise InvalidArgument(f"{what} path {path} is longer than {MAX_SOCKET_PATH} bytes, too long for a unix socket",
                              hint="use a shorter --home or TMPDIR")
    return path


def private_dir() -> Path:
    """/tmp/imgtool-<uid>/ (or under $TMPDIR), created 0700; refused unless it is a folder we alone own."""
    folder = Path(tempfile.gettempdir()) / f"imgtool-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise Refused(f"{folder} is not a private folder of this user (a symlink, another owner, or open to others)",
                      hint=f"remove it (rm -r {folder}) or set TMPDIR to a folder of your own")
    return folder
