"""Ingest v1, ingest v2, restore v2 for every contender, in alternating rounds.

Round r runs the contenders in an order rotated by r, so no tool always goes first (or always runs right
after the one that filled the page cache with the same disk). The page cache is dropped before every
timed step when the kernel allows it. Every restore is compared with v2 by `qemu-img compare`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from benchlib.disk import Disks
from benchlib.measure import BenchError, Step, drop_caches, log, sh, timed, tree_size
from benchlib.peers import ALL, Contender


def _one(contender: Contender, disks: Disks) -> dict[str, Any]:
    work, out = contender.work, contender.work / "out"
    shutil.rmtree(work, ignore_errors=True)
    out.mkdir(parents=True)
    contender.prepare()
    result: dict[str, Any] = {"dropped_caches": drop_caches()}
    result["v1"] = timed(contender.ingest_v1()).to_json()
    result["stored_v1"], _ = tree_size(contender.stored())
    contender.between()
    drop_caches()
    result["v2"] = timed(contender.ingest_v2()).to_json()
    result["stored"], result["files"] = tree_size(contender.stored())
    optimize = contender.optimize()
    if optimize is not None:
        result["stored_before_optimize"] = result["stored"]
        drop_caches()
        result["optimize"] = timed(optimize).to_json()
        result["stored"], result["files"] = tree_size(contender.stored())
    drop_caches()
    step, restored = contender.restore_v2(out)
    result["restore"] = timed(step).to_json()
    try:
        sh(["qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", restored, disks.v2_raw])
    except BenchError as exc:
        raise BenchError(f"{contender.key}: the restored v2 differs from v2: {exc}") from None
    result["restore_verified"] = True
    shutil.rmtree(work)
    return result


def floor_step(disks: Disks, write_to: Path | None = None) -> Step:
    """Read v1.qcow2 whole, BLAKE3 and compress every chunk with the ingest codec, on all cores; with
    `write_to`, also write what the codec produced there, as capture writes its packs."""
    extra = ["--write", str(write_to)] if write_to is not None else []
    return Step([sys.executable, "-m", "benchlib.floor", str(disks.v1_qcow2), *extra])


def run_rounds(disks: Disks, work: Path, rounds: int, only: set[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Per contender key, one result per round (seconds, KiB, bytes); "floor": the machine's floor for v1."""
    kinds = [k for k in ALL if only is None or k.key in only]
    results: dict[str, list[dict[str, Any]]] = {k.key: [] for k in kinds}
    results["floor"] = []
    for r in range(rounds):
        drop_caches()
        floor = {"v1": timed(floor_step(disks)).to_json()}
        work.mkdir(parents=True, exist_ok=True)
        drop_caches()
        floor["v1_written"] = timed(floor_step(disks, work)).to_json()
        results["floor"].append(floor)
        log(f"round {r + 1}/{rounds}: floor (read + BLAKE3 + ingest codec) {floor['v1']['wall']:.1f}s, "
            f"and writing its output {floor['v1_written']['wall']:.1f}s")
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for kind in order:
            contender = kind(disks, work / kind.key)
            log(f"round {r + 1}/{rounds}: {kind.key}")
            res = _one(contender, disks)
            log(f"  v1 {res['v1']['wall']:.1f}s  v2 {res['v2']['wall']:.1f}s  "
                f"restore {res['restore']['wall']:.1f}s  stored {res['stored'] >> 20} MiB")
            results[kind.key].append(res)
    return results
