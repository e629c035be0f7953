"""A real distribution 2.8 registry with an `auth:` block of the test's choosing (here: token auth).

Starter until tests/remote/registry.py (the remote branch's fixture) takes an auth block: same
rules: 127.0.0.1, a free port, its own folder, as nobody when run as root, stopped by its pid.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

NOBODY = 65534


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status in (200, 401)
    except OSError:
        return False
    finally:
        conn.close()


def _hand_over(root: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    for dirpath, dirs, files in os.walk(root):
        os.chown(dirpath, NOBODY, NOBODY)
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
    for parent in root.parents:  # tmp_path folders are 0700: let nobody traverse them
        if parent != Path("/") and not parent.stat().st_mode & 0o001:
            os.chmod(parent, parent.stat().st_mode | 0o001)
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@contextlib.contextmanager
def running(root: Path, auth: str) -> Iterator[str]:
    """Yield the registry's host:port; `auth` is the config's `auth:` block."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    port = free_port()
    (root / "config.yml").write_text(
        "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
        "  redirect:\n    disable: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  draintimeout: 2s\n" + auth)
    prefix = _hand_over(root)
    with (root / "registry.log").open("ab") as log:
        process = subprocess.Popen([*prefix, "docker-registry", "serve", str(root / "config.yml")],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("docker-registry did not start: "
                                   + (root / "registry.log").read_text(errors="replace")[-1500:])
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
