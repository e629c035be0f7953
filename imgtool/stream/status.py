"""The stream's status file in the VM folder, as EBS reports volume initialization: what `vm show` reads.

Written (atomically, about once a second) by the stream server alone; read (imgtool/vm/streaming.py) by
anyone. A status whose writer is gone is reported as it was left, with `server` false.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from imgtool.vm.streaming import PID, STATUS, read_status, server_pid
from store import atomic

__all__ = ["PID", "STATES", "figures", "read_status", "server_pid", "write"]

STATES = ("starting", "streaming", "hydrating", "paused-waiting-for-remote", "complete", "failed")


def write(folder: Path, body: dict[str, Any]) -> None:
    atomic.replace(folder / STATUS, json.dumps(body, indent=2, sort_keys=True).encode())


def figures(total: int, local: int, fetched: int, elapsed: float | None) -> dict[str, Any]:
    """Bytes, rate (fetched bytes per second since the first fetch) and the time left at that rate."""
    rate = fetched / elapsed if elapsed and elapsed > 0 and fetched else None
    left = max(total - local, 0)
    return {"bytes_total": total, "bytes_local": local, "bytes_fetched": fetched,
            "rate_bytes_per_second": round(rate) if rate else None,
            "eta_seconds": round(left / rate) if rate else (0 if not left else None)}
