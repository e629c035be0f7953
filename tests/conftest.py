"""Shared fixtures. Integration tests skip when a tool is missing, except in CI."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.reliability.harness import Zygote


def require_tools(*tools: str) -> None:
    """Skip (locally) or fail (CI: IMGTOOL_REQUIRE_TOOLS=1) when a tool is missing."""
    missing = [t for t in tools if shutil.which(t) is None]
    if not missing:
        return
    message = f"missing tools: {', '.join(missing)} (run ./scripts/setup)"
    if os.environ.get("IMGTOOL_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def takes_o_direct(folder: Path) -> bool:
    """Whether files in `folder` can be opened for O_DIRECT (store/direct.py falls back where not)."""
    from store import direct

    probe = folder / ".o-direct-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        return direct.enable(fd)
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygote]:
    """imgtool forked from a warm process (~10 ms a run instead of ~0.7 s of imports): the campaigns and
    the remote kill tests. Imported here only when a test asks for it."""
    from tests.reliability.harness import Zygote

    server = Zygote(tmp_path_factory.mktemp("zygote"))
    try:
        yield server
    finally:
        server.close()


# Programs a VM test starts that outlive the command that started them (QEMU daemonizes; the stream
# server, virtiofsd and switches follow the VM). A test that fails half-way must not leave them running.
_VM_PROGRAMS = (b"qemu-system-", b"virtiofsd", b"imgtool.stream.serve", b"imgtool.net.daemon")


@pytest.fixture(autouse=True)
def _no_stray_vm_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    if "tmp_path" not in request.fixturenames:
        yield
        return
    folder = os.fsencode(request.getfixturevalue("tmp_path"))  # asked first, so torn down after us
    yield
    for pid in _processes_under(folder):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _processes_under(folder: bytes) -> list[int]:
    """Pids of VM programs whose command line names a path inside `folder`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if folder in cmdline and any(program in cmdline for program in _VM_PROGRAMS):
            found.append(int(entry.name))
    return found
