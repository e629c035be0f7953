"""scripts/bench: run the benchmark sections and write the document (see scripts/bench --help)."""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from benchlib import report
from benchlib.disk import Profile, ensure_disks
from benchlib.ingest import run_rounds
from benchlib.machine import cold_read_speed, ensure_programs, facts
from benchlib.measure import BenchError, drop_caches, log
from benchlib.peers import ALL
from benchlib.remote import run_remote
from benchlib.scale import run_scale
from benchlib.vmnew import run_vmnew

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "bench"
SECTIONS = ("ingest", "vmnew", "scale", "remote")
PROFILES = {"full": Profile("full", 4 << 30, 2_000_000_000), "quick": Profile("quick", 512 << 20, 200_000_000)}


def _args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small disk, one round, fewer versions (< 2 minutes)")
    ap.add_argument("--runs", type=int, help="rounds of ingest/restore (default 3; quick 1)")
    ap.add_argument("--vm-runs", type=int, help="runs of vm new per image (default 5; quick 1)")
    ap.add_argument("--versions", type=int, help="versions for the scale test (default 10000; quick 500)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    ap.add_argument("--remote", action="store_true", help="only the sharing section (push/pull against a local "
                    "registry, beside skopeo); keeps the other sections of the saved results")
    ap.add_argument("--only", help="comma-separated contender keys for the ingest section: "
                    + ", ".join(k.key for k in ALL))
    ap.add_argument("--out", type=Path, help="document to write (default docs/BENCHMARKS.md; quick: "
                    ".cache/bench/quick/BENCHMARKS.md)")
    ap.add_argument("--rebuild-disk", action="store_true", help="rebuild the cached test disk")
    ap.add_argument("--worktree", action="store_true",
                    help="benchmark imgtool as it is in the working tree (default: a snapshot of HEAD)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the document from the saved results")
    return ap.parse_args(argv)


def _snapshot() -> tuple[Path, str]:
    """imgtool/ and store/ as committed at HEAD, extracted once under .cache/bench/src/<commit>.

    Others may be editing the working tree while the benchmark runs; a snapshot keeps every round on
    the same code and names it exactly.
    """
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    dest = CACHE / "src" / commit
    if not dest.is_dir():
        tar = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "imgtool", "store"],
                             capture_output=True, check=True).stdout
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
            archive.extractall(tmp, filter="data")
        tmp.rename(dest)
    return dest, commit[:12]


def _python_env(source: Path | None) -> None:
    """Children import imgtool from `source` (None: the working tree) with bytecode caching on.

    A user's Python caches compiled modules; a session may run with PYTHONDONTWRITEBYTECODE=1, which
    would make every imgtool command compile its modules again. The cache goes under .cache/bench.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(CACHE / "pycache")
    paths = [str(source)] if source else []
    os.environ["PYTHONPATH"] = os.pathsep.join([*paths, str(REPO / "scripts")])
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(source or REPO / "imgtool"),
                    *([] if source else [str(REPO / "store")])], check=False, stdout=subprocess.DEVNULL)


def _save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True))


def _dirty() -> bool:
    return bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "imgtool", "store"],
                               capture_output=True, text=True, check=False).stdout.strip())


def main(argv: list[str]) -> int:
    args = _args(argv)
    mode = "quick" if args.quick else "full"
    out = args.out or (CACHE / "quick" / "BENCHMARKS.md" if args.quick else REPO / "docs" / "BENCHMARKS.md")
    saved = CACHE / f"results-{mode}.json"
    if args.report_only:
        report.write(json.loads(saved.read_text()), out)
        log(f"wrote {out} from {saved}")
        return 0
    sections = ["remote"] if args.remote else [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        raise SystemExit(f"unknown sections: {', '.join(sorted(unknown))}")
    only = set(args.only.split(",")) if args.only else None
    kinds = [k for k in ALL if only is None or k.key in only]
    needs = {"qemu-img", "qemu-io", "qemu-nbd", "mkfs.ext4", "ssh-keygen", "cloud-localds", "/usr/bin/time"}
    if "remote" in sections:
        needs |= {"docker-registry", "skopeo", "zstd"}
    missing = ensure_programs(needs | {p for k in kinds for p in k.needs})
    runnable = {k.key for k in kinds if not set(k.needs) & set(missing)}
    if args.worktree:
        _python_env(None)
        code = "the working tree" + (" (with uncommitted changes)" if _dirty() else "")
    else:
        source, commit = _snapshot()
        _python_env(source)
        code = f"commit {commit} (a snapshot of HEAD; uncommitted changes are not measured)"
    results: dict[str, Any] = {
        "mode": mode, "command": shlex.join(["scripts/bench", *argv]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": facts(CACHE, code),
        "missing": missing, "dropped_caches": drop_caches(),
        "rounds": args.runs or (1 if args.quick else 3),
    }
    log(f"{mode} run; page cache {'is' if results['dropped_caches'] else 'can NOT be'} dropped between steps")
    profile = PROFILES[mode]
    disks = ensure_disks(profile, CACHE, rebuild=args.rebuild_disk)
    results["disk"] = {"profile": profile.__dict__, "facts": disks.facts}
    results["machine"]["disk read"] = cold_read_speed(disks.v1_qcow2)
    work = CACHE / "work"
    if "ingest" in sections:
        results["ingest"] = run_rounds(disks, work / "ingest", results["rounds"], runnable)
        _save(saved, results)
    if "vmnew" in sections and "cloud-localds" not in missing:
        results["vmnew_runs"] = args.vm_runs or (1 if args.quick else 5)
        results["vmnew"] = run_vmnew(work / "vmnew", CACHE, disks.v1_raw, results["vmnew_runs"])
        _save(saved, results)
    if sections == ["remote"] and saved.is_file():  # one section alone: keep the others as they were
        results = {**json.loads(saved.read_text()), **{k: results[k] for k in ("date", "command")}}
    if "remote" in sections:
        results["remote"] = run_remote(work / "remote", disks)
        _save(saved, results)
    if "scale" in sections:
        results["scale"] = run_scale(work / "scale", args.versions or (500 if args.quick else 10_000),
                                     2 if args.quick else 7)
    _save(saved, results)
    report.write(results, out)
    log(f"wrote {out} (results in {saved})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
