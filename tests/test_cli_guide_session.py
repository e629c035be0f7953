"""docs/GUIDE.md's "A first session" works as written: every line of it is run, in order, through the
real command line (and the real scripts/build-test-image and qemu-img), on a fresh home and folder.

A line's comment `# exit N` is the exit code the GUIDE promises for it; every other line must exit 0.
The session boots its VM under QEMU (TCG) until the test image prints READY.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.cli import Cli
from tests.conftest import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.boot]
ROOT = Path(__file__).resolve().parent.parent


def session_commands(guide: str) -> list[tuple[list[str], int]]:
    """The session block's commands as argv lists (continuations joined, `&&` split), each with the
    exit code the GUIDE gives it."""
    block = guide.split("## A first session", 1)[1].split("```", 2)[1]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = line.partition("  #")
        expected = re.search(r"\bexit (\d+)", comment)
        for part in code.split("&&"):
            if part.strip():
                commands.append((shlex.split(part), int(expected.group(1)) if expected else 0))
    return commands


def test_the_session_is_read_whole() -> None:
    commands = session_commands((ROOT / "docs" / "GUIDE.md").read_text())
    assert commands[0] == (["scripts/build-test-image", "tiny.raw"], 0)
    assert (["imgtool", "audit", "tiny.raw"], 5) in commands
    assert commands[-1][0] == ["imgtool", "gc", "--dry-run"]
    assert any(argv[:3] == ["imgtool", "vm", "new"] and "--start" in argv for argv, _ in commands)


def test_a_first_session_works_as_written(tmp_path: Path) -> None:
    require_tools("qemu-img", "qemu-system-x86_64", "qemu-storage-daemon", "debugfs", "mkfs.fat", "mkfs.ext4",
                  "syslinux", "mcopy")
    work = tmp_path / "work"
    work.mkdir()
    cli = Cli(tmp_path / "home", env={"HOME": str(tmp_path / "user"), "IMGTOOL_ACCEL": "tcg"}, cwd=work)
    for argv, expected in session_commands((ROOT / "docs" / "GUIDE.md").read_text()):
        if argv[0] == "imgtool":
            done = cli(*argv[1:], ok=False)
        else:
            program = str(ROOT / argv[0]) if argv[0].startswith("scripts/") else argv[0]
            done = subprocess.run([program, *argv[1:]], cwd=work, capture_output=True, text=True, check=False,
                                  timeout=900)
        assert done.returncode == expected, f"{shlex.join(argv)} exited {done.returncode}:\n{done.stderr}"
        assert "Traceback" not in done.stderr
    versions = cli.json("version", "list", "team/base")
    assert isinstance(versions, list) and [v["version"] for v in versions] == ["1.0.0", "1.0.1"]
    assert (work / "out.qcow2").exists()
