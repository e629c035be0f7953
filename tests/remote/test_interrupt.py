"""Ctrl-C (SIGINT) in the middle of a real push and a real pull, at a byte count the proxy counts: the
command says what was kept and that the same command resumes (exit 130); nothing is named or tagged
unfinished; the rerun moves less than a whole transfer, because it reuses what the interrupted one kept."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgtool.gallery.galleries import VERSIONS
from imgtool.home import Home
from store.packs import ChunkIndex
from store.verify import verify
from tests.cli import Cli
from tests.remote.helpers import disk_bytes, make_home, publish_bytes
from tests.remote.proxy import Switch, proxy
from tests.remote.registry import Registry

pytestmark = pytest.mark.integration
SIZE = 160 << 20  # about 72 MB packed: three packs of at most 32 MiB each way


def interrupted(switch: Switch, home: Path, *args: str, at_byte: int) -> subprocess.CompletedProcess[str]:
    """imgtool --json ARGS, sent SIGINT (what Ctrl-C sends) once the proxy has passed `at_byte` body bytes."""
    victim: list[subprocess.Popen[str]] = []

    def ctrl_c() -> None:
        os.kill(victim[0].pid, signal.SIGINT)
        time.sleep(0.5)  # the signal is taken before the proxy drops the connection it was sent on

    switch.action = ctrl_c
    switch.arm(at_byte=at_byte)
    proc = subprocess.Popen([sys.executable, "-m", "imgtool", "--json", *args], text=True,
                            env={**os.environ, "IMGTOOL_HOME": str(home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    victim.append(proc)
    out, err = proc.communicate(timeout=300)
    switch.action = None
    switch.reset()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_ctrl_c_in_a_push_and_a_pull_says_what_was_kept_and_the_rerun_resumes(
        registry: Registry, tmp_path: Path) -> None:
    src = make_home(tmp_path / "a")
    publish_bytes(src, "team/base", "1.0.0", disk_bytes(SIZE, seed=70))
    with proxy(registry.url) as (url, switch):
        whole = Cli(tmp_path / "c")  # what a whole push of the same version sends, for comparison
        make_home(tmp_path / "c")
        publish_bytes(Home.at(tmp_path / "c"), "team/base", "1.0.0", disk_bytes(SIZE, seed=70))
        whole("remote", "add", "fresh", f"{url}/interrupt-whole", "--insecure")
        full = whole.json("push", "team", "fresh")["transfer"]["bytes_sent"]  # type: ignore[index]

        a = Cli(src.root)
        a("remote", "add", "origin", f"{url}/interrupt", "--insecure")
        a("trust", "policy", "origin", "any")
        stopped = interrupted(switch, src.root, "push", "team", "origin", at_byte=full * 7 // 8)
        assert stopped.returncode == 130, stopped.stderr
        assert "had reached origin and stay there, untagged; no version was tagged unfinished" in stopped.stderr
        assert "run `imgtool push team origin` again to resume" in stopped.stderr
        assert json.loads(stopped.stdout)["error"]["category"] == "interrupted"
        untagged = a("remote", "versions", "origin:team/base", ok=False)  # blobs only: no tag, no definition
        assert untagged.returncode == 3 and "origin has no definition team/base" in untagged.stderr
        resumed = a.json("push", "team", "origin")
        sent = resumed["transfer"]["bytes_sent"]  # type: ignore[index]
        kept = re.search(r"interrupted: (\d+) blobs? \(([\d.]+) MiB\) had reached origin", stopped.stderr)
        assert kept is not None, stopped.stderr  # seven eighths through, at least the small last pack is there
        assert abs(full - sent - float(kept.group(2)) * (1 << 20)) < 0.1 * (1 << 20), (sent, full, kept.groups())

        b = Cli(tmp_path / "b")
        b("remote", "add", "origin", f"{url}/interrupt", "--insecure")
        b("trust", "policy", "origin", "any")
        stopped = interrupted(switch, tmp_path / "b", "pull", "origin:team/base@1.0.0", at_byte=full * 2 // 3)
        assert stopped.returncode == 130, stopped.stderr
        assert "received: the chunks already stored are kept here, unnamed" in stopped.stderr
        assert "run `imgtool pull origin:team/base@1.0.0` again to resume" in stopped.stderr
        home = Home.at(tmp_path / "b")
        assert home.store.get_name(VERSIONS, "team", "base", "1.0.0") is None
        assert verify(home.store, deep=True).ok
        stored = len(ChunkIndex.load(home.store.layout).locations)
        assert stored > 0  # two thirds through, at least the small last pack arrived whole and was kept
        pulled = b.json("pull", "origin:team/base@1.0.0")
        assert pulled["status"] == "pulled"  # type: ignore[index]
        every = len(ChunkIndex.load(src.store.layout).locations)
        assert pulled["chunks_fetched"] == every - stored, (pulled, every, stored)  # type: ignore[index]
        assert b("verify", "--deep").returncode == 0
