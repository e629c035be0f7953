"""`imgtool du --json` in a child process, for the store page and /api/du.

du reads every version record and marks every chunk: tens of seconds of CPU on a home with 10,000
versions. In the server's own process that work would hold the interpreter lock and slow every other
page for as long; in a child (at a lower priority) it runs beside them on another core. The document is
the CLI's own, so it cannot disagree with `imgtool du --json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from imgtool.errors import Corrupt
from imgtool.tools import run

DU_TIMEOUT = 3600.0


def du_argv(root: Path) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "imgtool", "--home", str(root), "--json", "du"]


def du(root: Path) -> dict[str, Any]:
    """What `imgtool --home ROOT --json du` prints. Raises ToolFailed with its error when it fails."""
    done = run.run(du_argv(root), timeout=DU_TIMEOUT)
    try:
        body = json.loads(done.stdout)
    except ValueError:
        raise Corrupt("imgtool du printed something that is not JSON", hint="run imgtool du --debug") from None
    if not isinstance(body, dict):
        raise Corrupt("imgtool du printed an unexpected document", hint="run imgtool du --debug")
    return body
