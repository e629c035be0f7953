"""Page times of `imgtool serve` on a home with many versions (default 10,000 in one definition).

    scripts/bench-web [--versions N] [--runs R] [--rebuild]

Builds the home once (benchlib.webhome; reused from .cache/bench-web while it exists), starts
`imgtool serve --port 0 --json` on it as a script would, and times how long it takes to say it is ready
(it fills its caches and counts du first) and then each page and API endpoint over HTTP on the
loopback: the first request to it after the start, then R more (median and worst); then, on a copy
of the home, the first request to each 10 s after a publish into the big definition. Writes
.cache/bench-web/results.json and prints a table. (The home has no VM: /vms/NAME is not timed.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchlib import webhome
from benchlib.mkversions import number
from imgtool.gallery.image_versions import PublishRequest, publish
from imgtool.gallery.version_index import RACY_NS
from imgtool.home import Home
from imgtool.names import Version, parse_definition_ref

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "bench-web"
IMGTOOL = REPO / ".venv" / "bin" / "imgtool"
# A visit this long after a publish: a changed folder is trusted (and remembered) 2 s after it changed,
# and the server, which looks every second, then reads the change again before anyone asks.
SETTLE = RACY_NS / 1e9 + 8.0


def pages(count: int) -> list[str]:
    latest, revoked = number(count - 2), number(count - 3)  # the last one is excluded from latest
    last_page = (count + 49) // 50
    return ["/", "/galleries/bench", "/definitions/bench/many", f"/definitions/bench/many?page={last_page // 2}",
            f"/definitions/bench/many?page={last_page}", f"/versions/bench/many/{latest}",
            f"/versions/bench/many/{revoked}", "/definitions/bench/many/sharing",
            f"/definitions/bench/many/sharing?page={last_page}", "/lineage", "/remotes", "/vms", "/store",
            "/definitions/other/small", "/versions/other/small/1.1.0"]


def api(count: int) -> list[str]:
    latest = number(count - 2)
    return ["/api/galleries", "/api/galleries/bench", "/api/galleries/bench/definitions", "/api/definitions/bench/many",
            "/api/definitions/bench/many/versions", "/api/definitions/bench/many/resolve",
            f"/api/versions/bench/many/{latest}", f"/api/versions/bench/many/{latest}/users", "/api/vms",
            "/api/remotes", "/api/trust", "/api/du"]


def ensure_home(count: int, rebuild: bool) -> Path:
    work = CACHE / f"h{count}"
    home = work / "home"
    if rebuild or not (work / "built").exists():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        started = time.perf_counter()
        webhome.build(home, count)
        (work / "built").write_text(f"{time.perf_counter() - started:.1f}\n")
    return home


class Server:
    def __init__(self, home: Path) -> None:
        env = {**os.environ, "IMGTOOL_HOME": str(home)}
        started = time.perf_counter()
        self.proc = subprocess.Popen([str(IMGTOOL), "serve", "--port", "0", "--json"], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        ready = json.loads(self.proc.stdout.readline())
        self.startup = time.perf_counter() - started  # from exec to the line: imports, caches and du
        url = urlsplit(ready["url"])
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 0
        status, headers, _ = self.request(f"/?{url.query}", cookie=None)
        if status != 303:
            raise RuntimeError(f"the token did not give a cookie ({status})")
        self.cookie = headers["set-cookie"].split(";", 1)[0]

    def request(self, path: str, cookie: str | None = "") -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
        try:
            conn.request("GET", path, headers={"Cookie": self.cookie if cookie == "" else (cookie or "")})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        finally:
            conn.close()

    def timed(self, path: str) -> float:
        started = time.perf_counter()
        status, _, body = self.request(path)
        elapsed = time.perf_counter() - started
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:300]!r}")
        return elapsed

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def measure(home: Path, paths: list[str], runs: int) -> tuple[float, dict[str, Any]]:
    """The server's start-up, and each path's first answer after it, median and worst of `runs` more."""
    server = Server(home)
    try:
        first = {p: server.timed(p) for p in paths}
        rest = {p: [server.timed(p) for _ in range(runs)] for p in paths}
    finally:
        server.stop()
    return server.startup, {p: {"first": first[p], "median": statistics.median(rest[p]), "worst": max(rest[p])}
                            for p in paths}


def after_publish(home: Path, paths: list[str], count: int) -> dict[str, float]:
    """Each path's first answer after a publish into the big definition, on a copy of the home: every
    memo whose key reads that definition's names (or the whole home's) is computed again."""
    copy = CACHE / f"h{count}-changed"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(home, copy / "home", symlinks=True)
    try:
        server = Server(copy / "home")
        try:
            for p in paths:
                server.timed(p)
            changed = Home.at(copy / "home")
            publish(changed, PublishRequest(parse_definition_ref(webhome.DEFINITION), Version.parse(number(count)),
                                            os_disk=f"{webhome.DEFINITION}@{number(count - 2)}",
                                            allow_unaudited=True))  # its disk is random bytes, as mkversions
            time.sleep(SETTLE)
            return {p: server.timed(p) for p in paths}
        finally:
            server.stop()
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="scripts/bench-web", description=__doc__)
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rebuild", action="store_true", help="build the home again")
    args = ap.parse_args(argv)
    home = ensure_home(args.versions, args.rebuild)
    page_paths = pages(args.versions)
    startup, timed = measure(home, page_paths + api(args.versions), args.runs)
    changed = after_publish(home, page_paths + api(args.versions), args.versions)
    for path, seconds in changed.items():
        timed[path]["after_publish"] = seconds
    results = {"versions": args.versions, "runs": args.runs, "startup": startup,
               "pages": {p: timed[p] for p in page_paths}, "api": {p: timed[p] for p in api(args.versions)}}
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"start-up (imgtool serve to its ready line): {startup:.1f} s")
    print(f"| page ({args.versions} versions) | first after start | median of {args.runs} | worst "
          "| first after a publish |")
    print("|---|---|---|---|---|")
    for section in ("pages", "api"):
        for path, t in results[section].items():
            cells = [f"{t[k] * 1000:.0f} ms" if k in t else "" for k in ("first", "median", "worst", "after_publish")]
            print(f"| `{path}` | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
