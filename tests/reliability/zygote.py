"""A fork server that runs the imgtool CLI in children it can kill at exact moments.

Why: a crash campaign needs hundreds of runs, and a fresh `python -m imgtool`
spends most of its ~0.4 s importing. This process imports imgtool once and forks
a child per run (~10 ms). The child runs the very entry point the console script
runs (`imgtool.cli.main.run`), with sys.argv, environment, cwd and output files
of the request.

Kill points: the child installs an audit hook (PEP 578) that numbers every
filesystem mutation under the watched folders (open for writing, rename/replace,
link, unlink, mkdir, rmdir, chmod, truncate, rmtree) and every fork (a tool such
as qemu-img or qemu-nbd is about to run). A request can make the child
  - SIGKILL itself right before mutation number `kill_at`,
  - SIGSTOP itself there (`stop_at`; the test resumes it with SIGCONT),
  - see that mutation fail with an OSError (`fail_at`, `fail_errno`),
or the server SIGKILLs it from outside `kill_after` seconds after the fork.
The child writes the list of mutations it reached to `events` when it exits.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
  {"op": "spawn", ...request...}          -> {"pid": N}
  {"op": "wait", "pid": N, "kill_after"}  -> {"pid": N, "status": exit code or -signal}
Standalone: python tests/reliability/zygote.py (from anywhere; it finds the repository).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PATH_EVENTS = {"os.rename": 2, "os.link": 2, "os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1,
               "os.truncate": 1, "shutil.rmtree": 1, "os.symlink": 2}
# Mutations that can fail for lack of space (creating or growing something).
SPACE_EVENTS = {"open", "os.rename", "os.link", "os.mkdir", "os.symlink", "os.truncate"}


class Hook:
    """Numbers the mutations a child makes and acts on the chosen one."""

    def __init__(self, request: dict[str, Any]) -> None:
        self.watch = tuple(str(p) for p in request.get("watch", []))
        self.kill_at: int | None = request.get("kill_at")
        self.stop_at: int | None = request.get("stop_at")
        self.fail_at: int | None = request.get("fail_at")
        self.fail_errno = int(request.get("fail_errno") or errno.ENOSPC)
        self.events: list[tuple[str, str]] = []
        self.active = True

    def _watched(self, path: object) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path.startswith("/"):
            return None  # an fd, or a name relative to a dir_fd (rmtree internals: its own event counts)
        return path if any(path == w or path.startswith(w + "/") for w in self.watch) else None

    def label(self, event: str, args: tuple[Any, ...]) -> str | None:
        """A readable label if this audit event is a counted mutation, else None."""
        if event == "os.fork":
            return "fork"
        if event == "open":
            path, mode, flags = args
            writing = bool(flags & WRITE_FLAGS) if mode is None else any(c in str(mode) for c in "wax+")
            watched = self._watched(path) if writing else None
            return f"open {watched}" if watched else None
        count = PATH_EVENTS.get(event)
        if count is None:
            return None
        paths = [self._watched(a) for a in args[:count]]
        if not any(paths):
            return None
        return f"{event} {' -> '.join(str(p) for p in paths)}"

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        label = self.label(event, args)
        if label is None:
            return
        self.events.append((event, label))
        number = len(self.events)
        if number == self.kill_at:
            self.active = False
            os.kill(os.getpid(), signal.SIGKILL)
        if number == self.stop_at:
            self.active = False
            os.kill(os.getpid(), signal.SIGSTOP)
            self.active = True
        if number == self.fail_at and event in SPACE_EVENTS:
            raise OSError(self.fail_errno, os.strerror(self.fail_errno), label)


def child(request: dict[str, Any]) -> None:
    """Run imgtool in this (forked) process as the request says; never returns."""
    code = 70
    hook = Hook(request)
    try:
        os.chdir(request.get("cwd") or "/")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, key in ((1, "stdout"), (2, "stderr")):
            out = os.open(request[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, fd)
            os.close(out)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - the process ends with os._exit
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        os.environ.update(request.get("env", {}))
        if request.get("umask") is not None:
            os.umask(int(request["umask"]))
        from imgtool.cli import main

        sys.argv = ["imgtool", *request["argv"]]
        sys.addaudithook(hook)
        try:
            main.run()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        hook.active = False
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if request.get("events"):
            with contextlib.suppress(Exception), open(request["events"], "w") as handle:
                json.dump(hook.events, handle)
        os._exit(code)


def wait(pid: int, kill_after: float | None) -> int:
    """Reap a child (killing it after `kill_after` s if given); exit code, or -signal."""
    if kill_after is not None:
        deadline = time.monotonic() + kill_after
        while time.monotonic() < deadline:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(_status)
            time.sleep(0.002)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def warm_up() -> None:
    """Import once, before any fork, including what typer imports lazily on its first parse."""
    import tempfile

    from imgtool.cli import main

    sys.stdout.flush()
    saved = os.dup(1)  # some output goes to the sys.stdout bound at import: silence fd 1 itself
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        with tempfile.TemporaryDirectory() as home:
            empty = Path(home) / "empty.img"
            empty.touch()
            for argv in (["gallery", "list"], ["capture", str(empty)],  # each fails fast, after parsing
                         ["push", "g", "nosuch"], ["pull", "nosuch:g/d"],  # the remote modules and httpx
                         ["publish", "g/d", "--version", "1.0.0", "--os-disk", "x", "--data-disk", "0=x",
                          "--end-of-life", "2000-01-01"],
                         ["vm", "new", "x", "--image", "g/d", "--cpus", "1", "--memory", "1", "--ssh-key", "x"],
                         ["definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s",
                          "--os-type", "linux", "--os-state", "generalized", "--min-vcpus", "1", "--feature",
                          "a=b", "--tag", "a=b", "--disallow-format", "raw"]):
                with contextlib.suppress(BaseException):
                    main.app(["--home", home, *argv], standalone_mode=False)
        sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def serve() -> None:
    sys.path.insert(0, str(REPO))
    warm_up()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                child(request)
            reply: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            reply = {"pid": request["pid"], "status": wait(int(request["pid"]), request.get("kill_after"))}
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
