"""The switch's process: one per network (flock), a pid file, daemonized like `qemu -daemonize`.

`python -m imgtool.net.daemon NETWORK_FOLDER` returns once the switch answers on its control socket
(exit 0, also when a switch already runs for this network), or exits 1 with the reason on stderr.
The switch then runs in a new session, its output appended to switch.log; the launcher's pipes are
let go at once, so a caller that captures output (imgtool.tools.run) is not held until the switch exits.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

from imgtool.errors import ImgtoolError, Refused
from imgtool.net.layout import NetworkPaths
from imgtool.net.switch import IDLE_EXIT, Switch
from store import atomic

log = logging.getLogger("imgtool.switch")
ALREADY_RUNNING = "already running"


def _take_lock(paths: NetworkPaths) -> int | None:
    """The switch lock's descriptor, or None if another switch holds it."""
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def serve(paths: NetworkPaths, *, idle_exit: float, ready: Callable[[str], None] | None = None) -> int:
    """Run the switch in this process until it exits; `ready(message)` is called once it answers."""
    if not paths.record.exists():
        raise Refused(f"network '{paths.name}' does not exist", hint="imgtool network create NAME")
    lock = _take_lock(paths)
    if lock is None:
        if ready is not None:
            ready(ALREADY_RUNNING)
        return 0
    switch = Switch(paths, idle_exit=idle_exit)
    stop = lambda *_: setattr(switch, "stopping", True)  # noqa: E731 - a signal handler
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        switch.open()
        atomic.replace(paths.pid_file, f"{os.getpid()}\n".encode())
        log.info("switch of network %s started (pid %d)", paths.name, os.getpid())
        if ready is not None:
            ready("ready")
        switch.run()
    finally:
        switch.close()
        paths.pid_file.unlink(missing_ok=True)
        os.close(lock)
        log.info("switch of network %s stopped", paths.name)
    return 0


def daemonize(paths: NetworkPaths, *, idle_exit: float) -> int:
    """Fork the switch into the background (new session, output to switch.log); return when it answers.

    The launcher exits 0 once the switch answers (or another one already does), 1 with the reason
    on stderr if it could not start.
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        os.waitpid(child, 0)  # it exits as soon as it has forked the switch itself
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read().decode("utf-8", "replace").strip()
        if said in ("ready", ALREADY_RUNNING):
            return 0
        log.error("%s", said or "the switch died while starting (see its log)")
        return 1
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _detach_stdio(paths.log)
    reported = False

    def ready(message: str) -> None:
        nonlocal reported
        os.write(write_end, message.encode())
        os.close(write_end)
        reported = True

    try:
        code = serve(paths, idle_exit=idle_exit, ready=ready)
    except BaseException as exc:
        log.exception("switch failed")
        if not reported:
            os.write(write_end, f"the switch of network '{paths.name}' did not start: {exc}".encode())
        os._exit(1)
    os._exit(code)


def _detach_stdio(log_file: Path) -> None:
    """stdin from /dev/null, stdout and stderr appended to the log (the launcher's pipes are let go)."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    os.chdir("/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgtool.net.daemon", description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="the network's folder, <home>/networks/NAME")
    parser.add_argument("--foreground", action="store_true", help="do not daemonize")
    parser.add_argument("--idle-exit", type=float, default=IDLE_EXIT, help="seconds without ports before exiting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s switch[%(process)d] %(message)s")
    paths = NetworkPaths(args.folder.absolute())
    try:
        if args.foreground:
            return serve(paths, idle_exit=args.idle_exit)
        return daemonize(paths, idle_exit=args.idle_exit)
    except ImgtoolError as exc:
        log.error("%s (%s)", exc.message, exc.hint)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
