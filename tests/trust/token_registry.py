"""A real distribution 2.8 registry, anonymous or with token auth (tests/remote/token_server.py).

Until tests/remote/registry.py (the remote branch's fixture) takes an auth block, the same rules
here: 127.0.0.1, a free port, its own folder, as nobody when run as root, stopped by its pid.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.remote.token_server import TokenServer

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
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@contextlib.contextmanager
def running(tokens: TokenServer | None = None) -> Iterator[str]:
    """Yield the registry's host:port: anonymous, or trusting `tokens` (auth: token).

    Its folder is under the system temp dir, not pytest's tmp_path: pytest resets
    /tmp/pytest-of-USER to 0700, which would lock the unprivileged registry out mid-test.
    """
    root = Path(tempfile.mkdtemp(prefix="imgtool-token-registry-"))
    try:
        with _serving(root, tokens) as host:
            yield host
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def _serving(root: Path, tokens: TokenServer | None) -> Iterator[str]:
    (root / "data").mkdir()
    auth = ""
    if tokens is not None:
        (root / "token-root.pem").write_bytes(tokens.certificate_pem())
        auth = tokens.registry_auth_config(root / "token-root.pem")
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
