"""The stream server of one VM: `python -m imgtool.stream.serve --home HOME VM`.

It judges the VM's remote version exactly as `pull` does (imgtool/remote/sharing.judged_remote: pin,
revocation, trust policy, signatures, records, digests, limits), serves the version's disks over NBD
on the VM's socket (exports "os", "lunN"), hydrates the rest in the background, and when every chunk
is local gives the version its local name by running `pull` itself (which then fetches nothing), points
the VM's record at that version and drops the stream: the VM's next start uses an ordinary base.

Process: returns (exit 0) once it listens, or exits 1 with the reason on stderr; then runs in a new
session, logging to stream.log in the VM folder, as the child of a keeper that starts it again when it
dies while the VM runs. One per VM (flock on stream.lock). It follows QEMU:
it exits when the VM's QEMU exits (or when none started within START_GRACE seconds), and with
`--hydrate-only` (no VM running) once hydration ends. While QEMU is paused on an I/O error
(rerror=stop: a chunk the registry did not give), it resumes it with backoff; QEMU re-issues the read.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgtool.errors import ImgtoolError, Refused
from imgtool.flows import boot_profiles, sharing
from imgtool.gallery import lookup
from imgtool.home import Home
from imgtool.nbd.server import Server
from imgtool.oci.target import Target
from imgtool.remote.pull import Judged, Puller
from imgtool.stream import status
from imgtool.stream.hydration import (
    PROFILED_READ_AHEAD,
    READ_AHEAD,
    Disk,
    DiskSource,
    Hydration,
    disk_full,
    prefetch,
)
from imgtool.tools import qmp
from imgtool.vm import record as vmrecord
from imgtool.vm import state as vmstate
from imgtool.vm.runtime import export_name, stream_socket
from store import atomic
from store.lock import file_lock

log = logging.getLogger("imgtool.stream")
START_GRACE = 300.0  # seconds to wait for the VM's QEMU after listening
TICK = 0.5
KEEP_EVERY = 5.0  # seconds between writes of demand-fetched chunks into the store
MAX_BACKOFF = 30.0
RESTARTS = 8  # a server that keeps dying is left dead after this many restarts in a row (vm resume starts one)
ALREADY_RUNNING = "already running"
PAUSED_DISK_FULL = "paused-disk-full"


def read_stream(folder: Path) -> dict[str, Any]:
    try:
        info = json.loads((folder / vmrecord.STREAM).read_text())
    except (OSError, ValueError) as exc:
        raise Refused(f"the VM in {folder} has no readable {vmrecord.STREAM}: {exc}",
                      hint="delete the VM and create it again") from None
    if not isinstance(info, dict) or not all(isinstance(info.get(k), str) for k in ("ref", "local", "mode")):
        raise Refused(f"{folder / vmrecord.STREAM} is malformed", hint="delete the VM and create it again")
    return info


def disks_of(puller: Puller, judged: Judged) -> list[Disk]:
    found = puller.disks(judged.repo, judged.manifest, judged.version)
    return [Disk(export_name(d.lun), index, manifest)
            for d, (index, manifest) in zip(judged.version.disks, found, strict=True)]


class Supervisor:
    """Follows QEMU, writes the status, resumes a paused VM, hydrates, and finishes the stream."""

    def __init__(self, home: Home, name: str, info: dict[str, Any], hydration: Hydration, *,
                 hydrate_only: bool, clock: Callable[[], float] = time.monotonic,
                 order: list[bytes] | None = None) -> None:
        self.home, self.name, self.info, self.hydration = home, name, info, hydration
        self.order = order or []  # the boot profile's chunks, first touch first (empty: no profile)
        self.prefetcher: threading.Thread | None = None
        self.paused_by_us = False  # the VM was paused because the store's disk is full
        self.folder = vmrecord.vm_dir(home, name)
        self.hydrate_only, self.clock = hydrate_only, clock
        self.stopping = threading.Event()
        self.state = "streaming"
        self.message: str | None = None
        self.hydrator: threading.Thread | None = None
        self.finished = False
        self.next_finish, self.finish_backoff = 0.0, 1.0  # naming the version needs the remote: retried with backoff

    def on_error(self, export: str, exc: BaseException) -> None:
        self.message = f"{export}: {exc}"

    def run(self) -> None:
        started = self.clock()
        seen_qemu = False
        last_keep = started
        backoff, next_resume = 1.0, 0.0
        if self.order and not self.hydrate_only:
            self.prefetcher = threading.Thread(target=self.prefetch, name="prefetch", daemon=True)
            self.prefetcher.start()
        elif self.info["mode"] == "background" or self.hydrate_only:
            self.start_hydrator()
        while not self.stopping.is_set():
            if not (self.folder / vmrecord.RECORD).exists():
                return  # the VM was deleted
            if (self.folder / HYDRATE_REQUEST).exists():
                self.start_hydrator()
            if self.hydration.complete() and not self.finished and self.clock() >= self.next_finish:
                self.finish()
            elif self.clock() - last_keep >= KEEP_EVERY and self.hydration.frames:
                self.keep()
                last_keep = self.clock()
            qemu = vmstate.running_state(self.home, self.name)
            seen_qemu = seen_qemu or qemu is not None
            if self._done(qemu is not None, seen_qemu, started):
                return
            if qemu is not None:
                backoff, next_resume = self.resume_if_paused(Path(qemu.qmp), backoff, next_resume)
            self.write_status()
            self.stopping.wait(TICK)

    def _done(self, qemu_runs: bool, seen_qemu: bool, started: float) -> bool:
        """Whether the server's work is over: a QEMU it served has exited (it goes with it; also a
        hydrate-only server a VM started on); else, hydrating only, the version is named; else no QEMU
        came within START_GRACE."""
        if seen_qemu:
            return not qemu_runs
        if self.hydrate_only:
            return self.finished
        return self.clock() - started > START_GRACE

    def resume_if_paused(self, sock: Path, backoff: float, next_resume: float) -> tuple[float, float]:
        """QEMU paused on an I/O error (a chunk the remote did not give): try again with backoff."""
        try:
            state = qmp.query_status(sock, timeout=2.0)
        except ImgtoolError:
            return backoff, next_resume
        if state != "io-error":
            if self.state == "paused-waiting-for-remote":
                self.state = "hydrating" if self.hydrator else "streaming"
            return 1.0, 0.0
        self.state = "paused-waiting-for-remote"
        now = self.clock()
        if now >= next_resume:
            log.info("VM %s paused on a read error (%s); resuming it to retry", self.name, self.message)
            try:
                qmp.cont(sock, timeout=2.0)
            except ImgtoolError as exc:
                log.warning("resuming VM %s failed: %s", self.name, exc)
            return min(backoff * 2, MAX_BACKOFF), now + backoff
        return backoff, next_resume

    def keep(self) -> bool:
        """Write the fetched chunks into the store; True once they are there. On a full disk the VM is
        paused (its reads would only pile up in memory) and told why; the run loop retries every
        KEEP_EVERY seconds and resumes the VM once a write succeeds."""
        try:
            self.hydration.keep()
        except (ImgtoolError, OSError) as exc:
            if not disk_full(exc):
                raise
            if self.state != PAUSED_DISK_FULL:
                self.paused_by_us = self._qmp(qmp.pause)
                log.error("VM %s paused: the local store's disk is full (%s)", self.name, exc)
            self.state = PAUSED_DISK_FULL
            self.message = (f"paused: the local store's disk is full ({getattr(exc, 'message', exc)}); free space "
                            f"(imgtool gc), and the VM resumes by itself within {KEEP_EVERY:g} s")
            return False
        if self.state == PAUSED_DISK_FULL:
            log.info("VM %s: the store took the fetched chunks again; resuming it", self.name)
            self.state, self.message = ("hydrating" if self.hydrator else "streaming"), None
            if self.paused_by_us:
                self._qmp(qmp.cont)
            self.paused_by_us = False
        return True

    def _qmp(self, command: Callable[..., None]) -> bool:
        qemu = vmstate.running_state(self.home, self.name)
        if qemu is None:
            return False
        try:
            command(Path(qemu.qmp), timeout=2.0)
        except ImgtoolError as exc:
            log.warning("VM %s: QMP failed: %s", self.name, exc)
            return False
        return True

    def start_hydrator(self) -> None:
        if self.hydrator is None:
            self.state = "hydrating"
            self.hydrator = threading.Thread(target=self.hydrate, name="hydrator", daemon=True)
            self.hydrator.start()

    def prefetch(self) -> None:
        """The boot profile's chunks ahead of the guest, in its order, PREFETCH_IN_FLIGHT requests at a time
        (a demand miss does not queue behind them: it asks at once); then, hydrating in the background,
        the rest."""
        began = self.clock()
        log.info("VM %s: prefetching the missing chunks of its boot profile", self.name)

        def failed(exc: BaseException, delay: float) -> None:
            self.message = f"waiting for {self.info['remote']}: {exc}"
            log.warning("prefetch for VM %s: %s; again in %.0fs", self.name, exc, delay)

        prefetch(self.hydration, self.order, stopping=self.stopping, on_error=failed)
        if self.stopping.is_set():
            return
        log.info("VM %s: boot profile prefetched (%d of its chunks were missing) in %.1fs", self.name,
                 self.hydration.counters.profile_chunks, self.clock() - began)
        if self.info["mode"] == "background":
            self.start_hydrator()

    def hydrate(self) -> None:
        """Fetch everything still missing, by pack, with backoff while the remote fails."""
        delay = 1.0
        while not self.stopping.is_set():
            batches = self.hydration.batches()
            if not batches:
                return
            for batch in batches:
                if self.stopping.is_set():
                    return
                try:
                    self.hydration.ensure(batch, wait=batch[0])
                    delay = 1.0
                except Exception as exc:
                    self.message = f"waiting for {self.info['remote']}: {exc}"
                    log.warning("hydration of VM %s: %s; again in %.0fs", self.name, exc, delay)
                    self.stopping.wait(delay)
                    delay = min(delay * 2, MAX_BACKOFF)
                    break
                self.hydration.flush_or_wait(self.stopping)

    def finish(self) -> None:
        """Every chunk is local: name the version as pull names it, point the VM at it, drop the stream."""
        if not self.keep():
            self.next_finish = self.clock() + KEEP_EVERY
            return
        try:
            pulled = sharing.pull_ref(self.home, self.info["ref"], as_ref=self.info["local"])
        except ImgtoolError as exc:  # e.g. the remote is down: the chunks stay leased, try again later
            self.message = f"naming the version failed: {exc.message}"
            log.warning("%s", self.message)
            self.next_finish = self.clock() + self.finish_backoff
            self.finish_backoff = min(self.finish_backoff * 2, MAX_BACKOFF)
            return
        _version, digest = lookup.get_version(self.home, pulled.name)
        with file_lock(self.home.vms / f".{self.name}.lock"):
            if not (self.folder / vmrecord.RECORD).exists():
                return
            record = vmrecord.load(self.home, self.name)
            vmrecord.save(self.home, dataclasses.replace(record, version_digest=digest))
            self.hydration.drop_leases()  # the version's name holds the chunks now
            (self.folder / vmrecord.STREAM).unlink(missing_ok=True)
        self.finished, self.state, self.message = True, "complete", None
        log.info("VM %s: every chunk is local; version %s named (%s)", self.name, pulled.name, pulled.status)
        self.write_status()

    def write_status(self) -> None:
        c = self.hydration.counters
        elapsed = (c.last_fetch - c.first_fetch) if c.first_fetch and c.last_fetch else None
        body = {"state": self.state, "remote": self.info["remote"], "image": self.info["image"],
                "mode": self.info["mode"], "message": self.message, "chunks_fetched": c.fetched_chunks,
                "profile_chunks": c.profile_chunks, "prefetched_chunks": c.prefetched_chunks,
                **status.figures(c.total_bytes, c.local_bytes, c.fetched_bytes, elapsed)}
        status.write(self.folder, body)


HYDRATE_REQUEST = "stream.hydrate"  # `vm hydrate` asks a running on-demand server to fetch the rest


def serve(home: Home, name: str, *, hydrate_only: bool = False, ready: Callable[[str], None] | None = None) -> int:
    folder = vmrecord.vm_dir(home, name)
    vmrecord.load(home, name)
    lock = os.open(folder / "stream.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        if ready is not None:
            ready(ALREADY_RUNNING)
        return 0
    try:
        if not (folder / vmrecord.STREAM).exists():
            if ready is not None:
                ready("ready")  # nothing to stream any more: the VM runs over its local base
            return 0
        return _serve(home, name, folder, hydrate_only=hydrate_only, ready=ready)
    finally:
        (folder / status.PID).unlink(missing_ok=True)
        os.close(lock)


def _serve(home: Home, name: str, folder: Path, *, hydrate_only: bool, ready: Callable[[str], None] | None) -> int:
    info = read_stream(folder)
    record = vmrecord.load(home, name)
    with sharing.judged_remote(home, info["ref"], as_ref=info["local"]) as (_remote, target, puller, judged):
        disks = disks_of(puller, judged)
        if [d.digest for d in judged.version.disks] != [d.base_disk for d in record.disks]:
            raise Refused(f"{info['ref']} no longer holds the disks VM '{name}' was made from",
                          hint=f"delete the VM (imgtool vm delete {name}) and create it again")
        sizes = {digest: descriptor.size for digest, descriptor in judged.manifest.packs.items()}
        hydration = Hydration(home.store, target, judged.repo, sizes, disks, lease_owner=name,
                              wanted=(folder / vmrecord.RECORD).exists)
        order = [] if hydrate_only else profile_order(target, judged, disks)
        try:
            hydration.keep()  # leases first: what an earlier run fetched is held from now on
            supervisor = Supervisor(home, name, info, hydration, hydrate_only=hydrate_only, order=order)
            signal.signal(signal.SIGTERM, lambda *_: supervisor.stopping.set())
            signal.signal(signal.SIGINT, lambda *_: supervisor.stopping.set())
            ahead = PROFILED_READ_AHEAD if order else READ_AHEAD
            exports = {d.label: DiskSource(hydration, d, read_ahead=ahead) for d in disks}
            with Server(stream_socket(folder), exports, on_error=supervisor.on_error):
                atomic.replace(folder / status.PID, f"{os.getpid()}\n".encode())
                supervisor.write_status()
                if ready is not None:
                    ready("ready")
                supervisor.run()
                supervisor.stopping.set()
            if hydration.frames:
                hydration.keep()  # what was fetched is not fetched again
        finally:
            hydration.close()
    return 0


def profile_order(target: Target, judged: Judged, disks: list[Disk]) -> list[bytes]:
    """The chunks the version's boot profile names, first touch first; [] without a usable one (each one
    skipped is said in the stream log: a profile is a hint, never a reason not to boot)."""
    known = {d.label: (v.digest, frozenset(d.manifest.chunks))
             for v, d in zip(judged.version.disks, disks, strict=True)}
    profile, skipped = boot_profiles.find(target, judged.repo, judged.fetched.digest, known)
    for why in skipped:
        log.warning("%s", why)
    if profile is None:
        log.info("no boot profile for %s: chunks are fetched as the guest asks for them", judged.fetched.digest[:19])
        return []
    by_label = {d.label: d for d in disks}
    order = [bytes.fromhex(by_label[o.disk].manifest.chunks[n]) for o in profile.disks for n in o.chunks]
    log.info("boot profile %s: %d chunks", judged.fetched.digest[:19], len(order))
    return order


def daemonize(home: Home, name: str, *, hydrate_only: bool = False) -> int:
    """Fork the server into the background (new session, output to stream.log); return once it listens.

    The background process is a keeper: it runs the server in a child and starts it again when it dies
    while its VM runs (`_keep_serving`)."""
    folder = vmrecord.vm_dir(home, name)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child > 0:
        os.close(write_end)
        os.waitpid(child, 0)
        with os.fdopen(read_end, "rb") as pipe:
            said = pipe.read().decode("utf-8", "replace").strip()
        if said in ("ready", ALREADY_RUNNING):
            return 0
        log.error("%s", said or "the stream server died while starting (see stream.log in the VM folder)")
        return 1
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    _detach_stdio(folder / "stream.log")
    os._exit(_keep_serving(home, name, hydrate_only, write_end))


def _keep_serving(home: Home, name: str, hydrate_only: bool, report: int) -> int:
    """Run the server in a child; when it dies (a signal, kill -9 included) while its VM's QEMU runs and
    the VM still streams, run it again after a backoff, at most RESTARTS times in a row.
    QEMU holds the guest's reads meanwhile (`reconnect-delay`) and reconnects to the same socket."""
    restarts, delay = 0, 1.0
    while True:
        child = os.fork()
        if child == 0:
            os._exit(_run_server(home, name, hydrate_only, report if restarts == 0 else None))
        if restarts == 0:
            os.close(report)  # the caller reads until the first server has said how it started
        _pid, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        # A first server that failed said why to its caller; one that died, or a restarted one that could
        # not judge the version again (the registry away), is run again.
        killed = code < 0 or (code > 0 and restarts > 0)
        if not killed or restarts >= RESTARTS or not _still_streaming(home, name, hydrate_only):
            return max(code, 0)
        restarts += 1
        log.warning("the stream server (pid %d) ended with %s; starting it again in %.0f s (%d of %d)",
                    child, f"signal {-code}" if code < 0 else f"code {code}", delay, restarts, RESTARTS)
        time.sleep(delay)
        delay = min(delay * 2, MAX_BACKOFF)


def _still_streaming(home: Home, name: str, hydrate_only: bool) -> bool:
    folder = vmrecord.vm_dir(home, name)
    if not (folder / vmrecord.RECORD).exists() or not (folder / vmrecord.STREAM).exists():
        return False
    return hydrate_only or vmstate.running_state(home, name) is not None


def _run_server(home: Home, name: str, hydrate_only: bool, report: int | None) -> int:
    """The server in this (child) process; `report` (the first one's) says to `daemonize` how it started."""
    def ready(message: str) -> None:
        nonlocal report
        if report is not None:
            os.write(report, message.encode())
            os.close(report)
            report = None

    try:
        return serve(home, name, hydrate_only=hydrate_only, ready=ready)
    except BaseException as exc:
        log.exception("stream server failed")
        if report is not None:
            text = exc.message + f" (hint: {exc.hint})" if isinstance(exc, ImgtoolError) else str(exc)
            os.write(report, f"the stream server of VM '{name}' did not start: {text}".encode())
        return 1


def _detach_stdio(log_file: Path) -> None:
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)
    os.chdir("/")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgtool.stream.serve", description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, required=True, help="the imgtool home")
    parser.add_argument("vm", help="the VM's name")
    parser.add_argument("--foreground", action="store_true", help="do not daemonize")
    parser.add_argument("--hydrate-only", action="store_true", help="no VM: fetch the rest, name it, exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stream[%(process)d] %(message)s")
    home = Home.at(args.home)
    try:
        if args.foreground:
            return serve(home, args.vm, hydrate_only=args.hydrate_only)
        return daemonize(home, args.vm, hydrate_only=args.hydrate_only)
    except ImgtoolError as exc:
        log.error("%s (hint: %s)", exc.message, exc.hint)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
