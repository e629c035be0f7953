"""Scale: `version list` and `version resolve` on a definition with many versions, and CLI start-up.

The versions are real publishes through imgtool's library (benchlib.mkversions), two processes in
parallel, all naming one small disk already in the store. Each command is timed end to end as a user
runs it (process start to exit, output to /dev/null): once right after dropping the page cache (cold),
then the median of several warm runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.measure import BenchError, Step, drop_caches, log, median_sample, sh, timed
from benchlib.mkversions import number
from benchlib.peers import IMGTOOL

DEFINITION = "bench/many"
WORKERS = 2


def _populate(home: Path, count: int) -> tuple[float, str]:
    """Publish `count` versions; return (seconds it took, all workers together, wall; the disk digest)."""
    env = {"IMGTOOL_HOME": str(home)}
    cli = [str(IMGTOOL)]
    sh([*cli, "gallery", "create", "bench"], env=env)
    sh([*cli, "definition", "create", DEFINITION, "--publisher", "bench", "--offer", "many", "--sku", "v",
        "--os-type", "linux", "--os-state", "generalized"], env=env)
    disk = home.parent / "small.raw"
    with disk.open("wb") as f:
        f.truncate(16 << 20)
    sh(["mkfs.ext4", "-q", "-F", disk])
    captured = json.loads(sh([*cli, "--json", "publish", DEFINITION, "--version", number(0), "--os-disk", disk,
                              "--allow-unaudited"], env=env))  # an ext4 without /etc: no guest OS to audit
    digest = str(captured["disks"][0]["digest"])
    start = time.perf_counter()
    bounds = [1 + (count - 1) * w // WORKERS for w in range(WORKERS + 1)]
    procs = [subprocess.Popen([sys.executable, "-m", "benchlib.mkversions", str(home), DEFINITION, digest,
                               str(bounds[w]), str(bounds[w + 1]), str(count - 1)],
                              stderr=subprocess.PIPE, cwd=home.parent)  # not the repository: imgtool from PYTHONPATH
             for w in range(WORKERS)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise BenchError(f"mkversions failed: {err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start, digest


def _measure(step: Step, runs: int) -> dict[str, Any]:
    drop_caches()
    cold = timed(step)
    timed(step)  # warm-up
    warm = [timed(step) for _ in range(runs)]
    return {"cold": cold.to_json(), "median": median_sample(warm).to_json(), "runs": [s.to_json() for s in warm]}


def run_scale(work: Path, count: int, runs: int) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    home = work / "home"
    log(f"scale: publishing {count} versions into {DEFINITION}")
    seconds, digest = _populate(home, count)
    env = {"IMGTOOL_HOME": str(home)}
    drop_caches()
    first = timed(Step([str(IMGTOOL), "version", "list", DEFINITION], env))  # cold, and nothing cached yet
    listed = sh([str(IMGTOOL), "--json", "version", "list", DEFINITION], env=env)
    if len(json.loads(listed)) != count:
        raise BenchError(f"version list shows {len(json.loads(listed))} versions, expected {count}")
    commands = {
        "version list": Step([str(IMGTOOL), "version", "list", DEFINITION], env),
        "version list --json": Step([str(IMGTOOL), "--json", "version", "list", DEFINITION], env),
        "version resolve": Step([str(IMGTOOL), "version", "resolve", DEFINITION], env),
        "--help": Step([str(IMGTOOL), "--help"], env),
    }
    log(f"scale: timing {', '.join(commands)} ({runs} warm runs each)")
    result: dict[str, Any] = {"versions": count, "publish_seconds": seconds, "workers": WORKERS,
                              "first_list": first.to_json(),
                              "commands": {name: _measure(step, runs) for name, step in commands.items()}}
    result["after_publish"] = _after_publish(env, digest, count, 3)
    shutil.rmtree(work)
    return result


def _after_publish(env: dict[str, str], digest: str, count: int, runs: int) -> dict[str, Any]:
    """`version list` right after publishing one more version (what a user does next), `runs` times."""
    found = []
    for i in range(runs):
        sh([str(IMGTOOL), "publish", DEFINITION, "--version", number(count + i), "--os-disk", digest,
            "--allow-unaudited"], env=env)
        found.append(timed(Step([str(IMGTOOL), "version", "list", DEFINITION], env)))
    return {"median": median_sample(found).to_json(), "runs": [s.to_json() for s in found]}
