"""Saving and loading a paused VM's state through QEMU 7.2's `exec:` migration, over QMP.

QEMU 7.2 has no `file:` migration URI (8.2) and no mapped-ram (9.0); `exec:` runs a shell
command and streams the state through its stdin or stdout, so the state goes through zstd into
a file. With `x-ignore-shared` the guest RAM, when it sits on a shared file-backed memory
backend, is not streamed at all: the file is the RAM. Both sides must set the capability before
the stream starts, hence `-incoming defer` on the loading side.
"""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

from imgtool.errors import ToolFailed
from imgtool.tools import qmp, run

IGNORE_SHARED = [{"capability": "x-ignore-shared", "state": True}]
POLL = 0.05


def machine_name(binary: str, alias: str) -> str:
    """The versioned machine type an alias such as "q35" stands for in this QEMU (e.g. pc-q35-7.2)."""
    listing = run.run([binary, "-machine", "help"], timeout=30).stdout
    return parse_machine(listing, alias)


def parse_machine(listing: str, alias: str) -> str:
    """From `-machine help`: "q35  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-7.2)" -> pc-q35-7.2."""
    for line in listing.splitlines():
        name, _, rest = line.partition(" ")
        if name == alias:
            found = re.search(r"\(alias of ([A-Za-z0-9._-]+)\)", rest)
            return found.group(1) if found else alias
    raise ToolFailed(f"machine type {alias!r} is not known to this QEMU", hint="check the QEMU installation")


def save(sock: Path, target: Path, *, timeout: float) -> None:
    """Pause the VM and write its device state (zstd) to `target`, which the caller created 0600.

    The shell redirection truncates the existing file, so it keeps its mode. Once this returns the
    source QEMU has flushed and released its disks (they may be copied); it stays paused.
    """
    with qmp.Qmp(sock, timeout=30) as session:
        session.execute("stop")
        session.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED})
        session.execute("migrate", {"uri": f"exec:zstd -q -T1 > {shlex.quote(str(target))}"})
        _wait_migrated(session, timeout)


def _wait_migrated(session: qmp.Qmp, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = session.execute("query-migrate")
        status = info.get("status") if isinstance(info, dict) else None
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            why = info.get("error-desc", "no reason given") if isinstance(info, dict) else "no reason given"
            raise ToolFailed(f"saving the VM state failed: {why}",
                             hint="check free space in the imgtool home; run with --debug")
        time.sleep(POLL)
    raise ToolFailed(f"saving the VM state did not finish within {timeout:g}s", hint="try again on a quieter host")


def load(sock: Path, source: Path, *, timeout: float) -> None:
    """Load a state written by `save` into a QEMU started with `-incoming defer`; the VM ends paused."""
    with qmp.Qmp(sock, timeout=30) as session:
        session.execute("migrate-set-capabilities", {"capabilities": IGNORE_SHARED})
        session.execute("migrate-incoming", {"uri": f"exec:zstd -dcq {shlex.quote(str(source))}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = session.execute("query-status")
            state = status.get("status") if isinstance(status, dict) else None
            if state not in ("inmigrate", None):
                return
            time.sleep(POLL)
    raise ToolFailed(f"loading the VM state did not finish within {timeout:g}s", hint="try again on a quieter host")


def resume(sock: Path) -> None:
    with qmp.Qmp(sock) as session:
        session.execute("cont")
