"""scripts/local-registry, the throwaway registry the README and the demo hand to people: it works from a
private folder (as root it runs as nobody), keeps its port, refuses a folder holding anything else, never
stops a process that is not it, and quotes the registry's own log when it cannot start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tools

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "local-registry"


def run(command: str, folder: Path, *, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(SCRIPT), command, str(folder)], capture_output=True, text=True, timeout=60,
                          check=False)
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def answers(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/v2/", timeout=5) as reply:
        return bool(reply.status == 200)


@pytest.fixture
def private(tmp_path: Path) -> Iterator[Path]:
    """A folder under a 0700 parent, as `mktemp -d` and /root are; deleted with its registry."""
    require_tools("docker-registry", "setpriv")
    parent = tmp_path / "private"
    parent.mkdir(mode=0o700)
    folder = parent / "registry"
    try:
        yield folder
    finally:
        if (folder / "local-registry.json").exists():
            run("delete", folder, ok=False)


def alive(pid: int) -> bool:
    """Running (a zombie is not: the sandbox's pid 1 may leave orphans unreaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def record(folder: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((folder / "local-registry.json").read_text())
    return data


def test_a_private_folder_serves_and_keeps_its_port(private: Path) -> None:
    url = run("start", private).stdout.strip()
    assert url.startswith("http://127.0.0.1:") and answers(url)
    assert run("start", private).stdout.strip() == url  # already running: the same registry
    pid = record(private)["pid"]
    assert isinstance(pid, int)
    run("stop", private)
    assert "pid" not in record(private) and not alive(pid)
    assert run("status", private, ok=False).returncode == 1
    assert run("start", private).stdout.strip() == url  # remotes and signatures name host:port
    assert answers(url)


def test_a_folder_holding_anything_else_is_refused_untouched(tmp_path: Path) -> None:
    require_tools("docker-registry")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    owner = (folder / "notes.txt").stat().st_uid
    done = run("start", folder, ok=False)
    assert done.returncode == 1 and "notes.txt" in done.stderr and "new or empty folder" in done.stderr
    assert (folder / "notes.txt").stat().st_uid == owner and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_stop_never_kills_a_process_that_reused_the_pid(private: Path) -> None:
    run("start", private)
    run("stop", private)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        data = record(private)
        data.update(pid=bystander.pid, started="1")  # the pid the registry had, now someone else's
        (private / "local-registry.json").write_text(json.dumps(data))
        done = run("stop", private)
        assert "nothing was stopped" in done.stderr and bystander.poll() is None
        assert "pid" not in record(private)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_failed_start_quotes_the_registry_log(private: Path) -> None:
    run("start", private)
    port = record(private)["port"]
    run("stop", private)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", int(str(port))))
        squatter.listen()
        done = run("start", private, ok=False)
    assert done.returncode == 1 and "address already in use" in done.stderr, done.stderr
    assert "pid" not in record(private)


@pytest.mark.skipif(os.geteuid() != 0, reason="the root path: the registry runs as nobody")
def test_as_root_the_registry_runs_as_nobody_outside_the_private_folder(private: Path) -> None:
    run("start", private)
    pid = record(private)["pid"]
    assert Path(f"/proc/{pid}").stat().st_uid == 65534
    state = Path(str(record(private)["state"]))
    assert not state.is_relative_to(private) and state.stat().st_uid == 65534
    run("delete", private)
    assert not state.exists() and not private.exists()
