"""The one subprocess seam: every external program imgtool runs goes through here.

Why one module: argv is built as data elsewhere and only executed here, so unit
tests can replace this seam alone; every failure becomes one `ToolFailed` carrying
argv, exit code and the tail of stderr; a missing binary becomes a `ToolMissing`
that says how to install it. Programs run with LANG=C.UTF-8, no stdin, and (for
untrusted input) CPU and address-space limits set before exec.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import resource
import shlex
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sh

from imgtool.errors import ToolFailed, ToolMissing

log = logging.getLogger("imgtool.run")
# Every exit status is ours to judge, including death by a signal (sh reports those as -signum).
OK_CODES = list(range(-64, 256))

Arg = str | os.PathLike[str] | int

# Which Debian package provides each program, for the "not found" hint.
PACKAGES = {
    "qemu-img": "qemu-utils",
    "qemu-io": "qemu-utils",
    "qemu-nbd": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-system-aarch64": "qemu-system-arm",
    "ssh": "openssh-client",
    "debugfs": "e2fsprogs",
    "qemu-storage-daemon": "qemu-system-common",
    "unshare": "util-linux",
    "fallocate": "util-linux",
    "zstd": "zstd",
}


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to a child before exec (for untrusted images)."""

    cpu_seconds: int | None = None
    address_space: int | None = None

    def preexec(self) -> Callable[[], None]:
        def apply() -> None:
            if self.cpu_seconds is not None:
                resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds))
            if self.address_space is not None:
                resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))

        return apply


# What OpenStack uses for qemu-img on untrusted images, with room for qemu-img map
# on large sparse images.
UNTRUSTED = Limits(cpu_seconds=120, address_space=2 << 30)


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


def argv_strings(argv: Sequence[Arg]) -> list[str]:
    return [str(a) if isinstance(a, int) else os.fspath(a) for a in argv]


def which(program: str) -> str:
    """Return the absolute path of `program`, or raise ToolMissing with an install hint."""
    found = shutil.which(program)
    if found is None:
        package = PACKAGES.get(program, program)
        raise ToolMissing(
            f"{program} not found on PATH",
            hint=f"install the Debian package {package} (./scripts/setup does it)",
        )
    return found


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["LANG"] = "C.UTF-8"
    env["LC_ALL"] = "C.UTF-8"
    env.update(extra or {})
    return env


def _decode(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def _tail(text: str, lines: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run(
    argv: Sequence[Arg],
    *,
    limits: Limits | None = None,
    timeout: float | None = None,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
) -> Result:
    """Run a program to completion and capture its output.

    Raises ToolMissing if the program is absent, ToolFailed (with argv, exit code
    and stderr tail) if it exits non-zero and `check` is true, or times out.
    """
    args = argv_strings(argv)
    command = sh.Command(which(args[0]))
    log.debug("+ %s", shlex.join(args))
    kwargs: dict[str, Any] = {
        "_env": child_env(env),
        "_in": input if input is not None else "",
        "_tty_out": False,
        "_return_cmd": True,
        "_ok_code": OK_CODES,
        "_decode_errors": "replace",
    }
    if limits is not None:
        kwargs["_preexec_fn"] = limits.preexec()
    done = command(*args[1:], **kwargs) if timeout is None else _run_with_deadline(command, args, kwargs, timeout)
    result = Result(args, done.exit_code, _decode(done.stdout), _decode(done.stderr))
    if check and result.returncode != 0:
        raise failure(result)
    return result


def _run_with_deadline(command: Any, args: list[str], kwargs: dict[str, Any], timeout: float) -> Any:
    """Run with a deadline enforced by a timer that kills the child.

    Why not sh's own `_timeout`: sh polls for it every 0.1 s, which adds up to 0.1 s
    to every short command (qemu-img info, map, create). A timer costs nothing
    unless it fires.
    """
    handle = command(*args[1:], **kwargs, _bg=True, _bg_exc=False, _new_session=True)
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(handle.process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        handle.wait()
    finally:
        timer.cancel()
    if fired.is_set():
        raise ToolFailed(f"{args[0]} did not finish within {timeout:g}s",
                         hint="the input may be hostile or the machine overloaded", argv=args)
    return handle


def failure(result: Result) -> ToolFailed:
    tail = _tail(result.stderr) or _tail(result.stdout)
    code = result.returncode
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return ToolFailed(
        f"{Path(result.argv[0]).name} failed ({why}): {tail or 'no output'}",
        hint="run with --debug to see the full command line",
        argv=result.argv,
        returncode=code,
        stderr_tail=tail,
    )


@dataclass
class Background:
    """A child process running in the background (qemu-nbd, a probe guest)."""

    argv: list[str]
    handle: Any

    @property
    def pid(self) -> int:
        return int(self.handle.process.pid)

    def alive(self) -> bool:
        return bool(self.handle.process.is_alive()[0])

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the child (SIGKILL if it ignores SIGTERM for `timeout` s) and reap it.

        Never raises: a child that is already gone (dead of a signal, or exited) is stopped.
        """
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.handle.process.terminate()
            try:
                self.handle.wait(timeout=timeout)
            except sh.TimeoutException:
                with contextlib.suppress(ProcessLookupError):
                    self.handle.process.kill()
            except sh.ErrorReturnCode:
                pass  # it died of our signal (or exited non-zero): either way it is gone
        with contextlib.suppress(sh.ErrorReturnCode):
            self.handle.wait()  # we asked it to stop; its exit status is not news

    def returncode(self) -> int | None:
        """None while running; else the exit code, or minus the signal number that killed it."""
        if self.alive():
            return None
        code = self.handle.process.exit_code
        return None if code is None else int(code)

    def stderr(self) -> str:
        """What the child wrote to stderr so far (never raises, even if it died of a signal)."""
        try:
            return _decode(self.handle.stderr)
        except sh.ErrorReturnCode as exc:
            return _decode(exc.stderr)
        except Exception:  # sh raises SignalException subclasses for signalled children
            return ""


PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a child gets when the thread that forked it exits


def _tether(parent: int, then: Callable[[], None] | None, death: int) -> Callable[[], None]:
    """A preexec step: the kernel signals the child when its forking thread dies (see _Spawner)."""

    def apply() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, death, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: nobody would signal us
            os._exit(1)
        if then is not None:
            then()

    return apply


class _Spawner:
    """One thread that lives as long as the process and forks every tethered child.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process: a child
    started from a pool thread would be killed when that worker retires, and one started from a
    short-lived thread at once. Forking from this thread ties children to the process's life. After
    fork(2) (the test harness's fork server) the thread does not exist in the child: it is restarted.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[tuple[bool, Any]]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        self._ensure()
        answer: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        self._jobs.put((fn, answer))
        ok, value = answer.get()
        if not ok:
            raise value
        return value

    def _ensure(self) -> None:
        with self._lock:
            if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
                return
            self._jobs = queue.Queue()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._serve, name="imgtool-spawner", daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        while True:
            fn, answer = self._jobs.get()
            try:
                answer.put((True, fn()))
            except BaseException as exc:  # handed to the caller, raised on its own thread
                answer.put((False, exc))


_spawner = _Spawner()


def spawn(
    argv: Sequence[Arg],
    *,
    limits: Limits | None = None,
    env: dict[str, str] | None = None,
    tethered: bool = False,
    death_signal: int = signal.SIGKILL,
    pass_fds: tuple[int, ...] = (),
    output: Path | None = None,
) -> Background:
    """Start a program in the background; the caller must `stop()` it.

    tethered: the child dies with this process even if it is SIGKILLed (qemu-nbd and probe guests
    run in sessions of their own, so nothing else would ever stop them).
    death_signal: what a tethered child gets then; SIGTERM for one that must clean up after itself
    (a FUSE export unmounts on SIGTERM; SIGKILL would leave a dead mount behind).
    pass_fds: descriptors the child inherits under the same numbers (a listening socket).
    output: stdout and stderr appended to this file instead of kept in memory, for a child that
    outlives this process (a pipe to us would break when we exit).
    """
    args = argv_strings(argv)
    command = sh.Command(which(args[0]))
    log.debug("+ %s &", shlex.join(args))
    kwargs: dict[str, Any] = {
        "_env": child_env(env),
        "_in": "",
        "_bg": True,
        "_bg_exc": False,
        "_tty_out": False,
        "_ok_code": OK_CODES,
        "_new_session": True,
    }
    if pass_fds:
        for fd in pass_fds:
            os.set_inheritable(fd, True)  # sh keeps them open, but exec would close a CLOEXEC one
        kwargs["_pass_fds"] = set(pass_fds)
    if output is not None:
        with open(output, "ab") as log_file:  # the child has its own copy once started
            kwargs["_out"] = log_file
            kwargs["_err_to_out"] = True
            return _spawn(command, args, kwargs, limits, tethered and death_signal)
    return _spawn(command, args, kwargs, limits, tethered and death_signal)


def _spawn(command: Any, args: list[str], kwargs: dict[str, Any], limits: Limits | None, death: int) -> Background:
    """death: the signal a tethered child gets when we die; 0 for a child not tethered."""
    preexec = limits.preexec() if limits is not None else None
    if not death:
        if preexec is not None:
            kwargs["_preexec_fn"] = preexec
        return Background(args, command(*args[1:], **kwargs))
    kwargs["_preexec_fn"] = _tether(os.getpid(), preexec, death)
    return Background(args, _spawner.call(lambda: command(*args[1:], **kwargs)))


def passthrough(argv: Sequence[Arg]) -> int:
    """Run `argv` with this process's stdin, stdout and stderr (ssh running a user's command); its exit
    code, or 128 + the signal that ended it (as a shell reports it)."""
    args = argv_strings(argv)
    path = which(args[0])
    log.debug("+ %s", shlex.join(args))
    code = subprocess.run([path, *args[1:]], env=child_env(), check=False).returncode
    return 128 - code if code < 0 else code


def exec_replace(argv: Sequence[Arg]) -> None:
    """Replace this process with `argv` (interactive tools such as ssh). Does not return."""
    args = argv_strings(argv)
    path = which(args[0])
    log.debug("+ exec %s", shlex.join(args))
    os.execve(path, args, child_env())
