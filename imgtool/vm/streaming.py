"""What a VM's stream looks like from the VM side: the status file its server writes, read for vm show.

The server (imgtool/stream/serve.py) writes `stream-status.json` and `stream.pid` in the VM folder;
`stream.json` there means the VM still streams (imgtool/vm/record.py, is_streaming).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgtool.home import Home
from imgtool.vm.record import is_streaming, vm_dir

STATUS = "stream-status.json"
PID = "stream.pid"


def server_pid(folder: Path) -> int | None:
    """The stream server's pid while it runs (a reused pid of another program is not it)."""
    try:
        pid = int((folder / PID).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"imgtool.stream.serve" in cmdline else None


def read_status(folder: Path) -> dict[str, Any] | None:
    """The last status written, with `server`: whether its server still runs; None if there is none."""
    try:
        body = json.loads((folder / STATUS).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    body["server"] = server_pid(folder) is not None
    return body


def hydration(home: Home, name: str) -> dict[str, Any] | None:
    """A streamed VM's hydration (state, bytes fetched and total, rate, ETA); None if it never streamed."""
    folder = vm_dir(home, name)
    found = read_status(folder)
    streaming = is_streaming(home, name)
    if found is None:
        return {"state": "starting", "server": False} if streaming else None
    if not streaming:
        found["state"] = "complete"
    return found
