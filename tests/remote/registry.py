"""A real distribution registry (Debian's `docker-registry`, distribution 2.8) for the tests.

Each instance gets its own folder (config, storage, htpasswd, log) and a free port on 127.0.0.1;
it never uses the packaged config or :5000. As root it runs as nobody (setpriv) after its folder
is handed over. It is stopped by its pid: SIGTERM, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

NOBODY = 65534
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_text(root: Path, port: int, htpasswd: Path | None, *, access_log: bool = False) -> str:
    auth = ""
    if htpasswd is not None:
        auth = f"auth:\n  htpasswd:\n    realm: imgtool-tests\n    path: {htpasswd}\n"
    return (
        "version: 0.1\n"
        f"log:\n  level: warn\n  accesslog:\n    disabled: {'false' if access_log else 'true'}\n"
        "storage:\n"
        f"  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        "  redirect:\n    disable: true\n"
        "  cache:\n    blobdescriptor: inmemory\n"
        f"http:\n  addr: 127.0.0.1:{port}\n  draintimeout: 2s\n"
        + auth
    )


@dataclass
class Registry:
    """One running registry; `url` is http://127.0.0.1:PORT."""

    root: Path
    users: dict[str, str] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    access_log: bool = False  # one line per request in registry.log (the benchmark counts them)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Registry:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "data").mkdir(exist_ok=True)
        htpasswd = self._write_htpasswd() if self.users else None
        self.port = self.port or free_port()
        config = self.root / "config.yml"
        config.write_text(config_text(self.root, self.port, htpasswd, access_log=self.access_log))
        argv = ["docker-registry", "serve", str(config)]
        if os.geteuid() == 0:
            _chown_tree(self.root, NOBODY)
            argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
        log = (self.root / "registry.log").open("ab")
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        log.close()
        self._wait_ready()
        return self

    def _write_htpasswd(self) -> Path:
        path = self.root / "htpasswd"
        path.unlink(missing_ok=True)
        for user, password in self.users.items():
            flags = "-cBbC" if not path.exists() else "-BbC"
            subprocess.run(["htpasswd", flags, "5", str(path), user, password], check=True,
                           capture_output=True, timeout=30)
        return path

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited {self.process.returncode}: {self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(self.url + "/v2/", timeout=1.0)
                if answer.status_code in (200, 401):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"docker-registry did not answer within {START_TIMEOUT}s: {self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "registry.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT)

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirs, files in os.walk(root):
        os.chown(dirpath, uid, uid)
        for name in dirs + files:
            os.lchown(os.path.join(dirpath, name), uid, uid)


@contextlib.contextmanager
def running(*, users: dict[str, str] | None = None, port: int = 0, access_log: bool = False) -> Iterator[Registry]:
    """A registry in a fresh folder directly under the system temp dir, removed afterwards.

    Not under pytest's tmp_path: pytest (ours or a concurrent run) resets /tmp/pytest-of-USER to 0700,
    which would lock the unprivileged registry out of its own files mid-test.
    """
    root = Path(tempfile.mkdtemp(prefix="imgtool-registry-"))
    registry = Registry(root, dict(users or {}), port=port, access_log=access_log)
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(root, ignore_errors=True)
