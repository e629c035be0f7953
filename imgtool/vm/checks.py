"""Boot checks: prove a version boots before `latest` may pick it.

`check_version` makes a throwaway VM from the version, starts it, waits for the definition's check
within its timeout, and deletes the VM whatever happened. Only the wait decides pass or fail: a VM
that cannot even be made or started (store damage, a missing tool, a busy lock) is an error, and the
version's record stays as it was. The result is written as the version's `check` (a new record
moving the name; the content never changes).

Check kinds:
  console:TEXT  a serial console line containing TEXT
  ssh           `ssh -o BatchMode=yes … true` succeeds with a throwaway key given to the VM
  cloud-init    `cloud-init status --wait` over that ssh exits 0
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from imgtool.clock import stamp
from imgtool.errors import InvalidArgument, NotFound, ToolFailed
from imgtool.gallery.galleries import get_definition
from imgtool.gallery.lifecycle_model import BootCheck, CheckResult, tail
from imgtool.gallery.lookup import get_version
from imgtool.gallery.model import Definition, ImageVersion
from imgtool.gallery.version_changes import update_version
from imgtool.home import Home
from imgtool.names import DefinitionRef, parse_image_ref
from imgtool.tools import run
from imgtool.vm import boot_profile, profile_recording
from imgtool.vm import lifecycle as vm
from imgtool.vm import runtime as vmrun
from imgtool.vm import state as vmstate
from imgtool.vm.boot_profile import BootProfile
from imgtool.vm.record import load, vm_dir

SSH_ATTEMPT_TIMEOUT = 20.0  # one ssh attempt; the loop around it obeys the check's own timeout
SSH_RETRY_PAUSE = 2.0
Clock = Callable[[], float]


def boot_check_of(home: Home, version: ImageVersion) -> BootCheck | None:
    """The check the version's definition asks for now (else the one it was published with)."""
    try:
        definition = get_definition(home, DefinitionRef(version.gallery, version.definition))
    except NotFound:
        definition = Definition.from_json(home.store.get_manifest(version.definition_record))
    return definition.boot_check


Started = Callable[[str, BootCheck], None]  # told the throwaway VM's name once it boots (to show life)


def check_version(home: Home, text: str, *, timeout: int | None = None, accel: str | None = None,
                  clock: Clock = time.monotonic, started: Started | None = None) -> CheckResult:
    """Boot-check G/D@X.Y.Z and record the result on the version; returns the result. `started(name, check)`
    is called once the throwaway VM runs, so that a caller can say what is being waited for and where."""
    parse_image_ref(text, require_version=True)
    version, _ = get_version(home, text)
    check = boot_check_of(home, version)
    if check is None:
        raise InvalidArgument(f"definition {version.gallery}/{version.definition} asks for no boot check",
                              hint=f"set one: imgtool definition update {version.gallery}/{version.definition} "
                                   "--require-boot-check --boot-check console:TEXT")
    if timeout is not None:
        check = BootCheck(check.kind, check.text, timeout)
    if check.kind != "console" and version.os_state == "specialized":
        raise InvalidArgument(f"a {check.kind} check needs a provisioned user, and {version.label} is specialized",
                              hint="check specialized images with --boot-check console:TEXT")
    profiles: list[BootProfile] = []
    result = run_check(home, version, check, accel=accel, clock=clock, started=started, profiled=profiles.append)
    update_version(home, version.label, check=result)
    for profile in profiles:  # after the record: a profile is a hint about a version that boots
        boot_profile.save(home.store, version.gallery, version.definition, version.version, profile)
    return result


def run_check(home: Home, version: ImageVersion, check: BootCheck, *, accel: str | None,
              clock: Clock = time.monotonic, started: Started | None = None,
              profiled: Callable[[BootProfile], None] | None = None) -> CheckResult:
    """Boot a throwaway VM from the version and wait for the check (nothing is recorded here). Its bases
    are read through a recorder: when the check passes, `profiled` is given the chunks the boot read
    until then, in first-touch order (the version's boot profile)."""
    name = f"boot-check-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="imgtool-check-") as scratch:
        key = _throwaway_key(Path(scratch)) if check.kind != "console" else None
        admin = "imgcheck" if version.os_state == "generalized" else None
        vm.create(home, vm.NewVm(name=name, image=version.label, ssh_key=key,
                                 admin_user=admin, allow_revoked=True, ignore_recommendations=False))
        try:
            with profile_recording.recording(home, load(home, name)) as (served, recorder):
                began = clock()
                vmrun.start(home, name, requested_accel=accel, served=served)
                if started is not None:
                    started(name, check)
                failure = _wait(home, name, check, deadline=began + check.timeout, clock=clock)
                elapsed = int((clock() - began) * 1000)
                if failure is None and profiled is not None:
                    profiled(recorder.profile())
                console = _console(home, name) if failure else None
                vmrun.stop(home, name, timeout=0)  # QEMU first, then the server it reads from
        finally:
            vm.delete(home, name)
    when = stamp()
    if failure is None:
        return CheckResult("passed", check.describe(), when, elapsed)
    return CheckResult("failed", check.describe(), when, elapsed, failure, console)


def _throwaway_key(folder: Path) -> Path:
    key = folder / "id_ed25519"
    run.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "imgtool boot check", "-f", key], timeout=30)
    return key.with_suffix(".pub")


def _wait(home: Home, name: str, check: BootCheck, *, deadline: float, clock: Clock) -> str | None:
    """None when the check passed before the deadline, else why it did not."""
    if check.kind == "console":
        assert check.text is not None
        why = _wait_console(home, name, check.text, deadline=deadline, clock=clock)
        return why.replace("in time", f"within {check.timeout}s") or None
    command = ["true"] if check.kind == "ssh" else ["cloud-init", "status", "--wait"]
    return _wait_ssh(home, name, command, deadline=deadline, clock=clock)


# What firmware and kernels print when a disk cannot boot: waiting longer changes nothing (SeaBIOS
# retries every 60 s, forever), so the check fails at once, naming the line.
CANNOT_BOOT = ("No bootable device", "Boot failed: not a bootable disk", "Boot failed: could not read the boot disk",
               "No bootable option or device was found", "Kernel panic - not syncing")


def cannot_boot(line: str) -> str | None:
    """Why the console line says the VM will never boot, or None."""
    found = next((sign for sign in CANNOT_BOOT if sign in line), None)
    return None if found is None else f"its console says the disk cannot boot: {line.strip()[:200]!r}"


def _wait_console(home: Home, name: str, text: str, *, deadline: float, clock: Clock) -> str:
    """'' when a console line contains `text` before the deadline, else why not (failing at once when the
    console says the disk cannot boot)."""
    for line in vmrun.console_lines(home, name, follow=True, timeout=max(deadline - clock(), 0.0)):
        shown = vmrun.plain(line)
        if text in shown:
            return ""
        fatal = cannot_boot(shown)
        if fatal is not None:
            return fatal
    if not vmstate.is_running(home, name):
        return f"the VM stopped before its console printed {text!r}"
    return f"its console did not print {text!r} in time"


def _console_says_cannot_boot(home: Home, name: str) -> str | None:
    return next((why for line in _console(home, name).splitlines() if (why := cannot_boot(line))), None)


def ssh_check_argv(port: int, user: str, key: Path, command: list[str]) -> list[str]:
    """ssh that never prompts (BatchMode) and trusts the throwaway VM's fresh host key."""
    return ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-i", str(key), "-p", str(port),
            f"{user}@127.0.0.1", "--", *command]


def _wait_ssh(home: Home, name: str, command: list[str], *, deadline: float, clock: Clock) -> str | None:
    record = load(home, name)
    assert record.seed is not None and record.seed.ssh_key is not None  # generalized, given a key above
    key = Path(record.seed.ssh_key[:-len(".pub")])
    user = record.seed.admin_user

    def attempt(timeout: float) -> tuple[int, str] | None:
        state = vmstate.running_state(home, name)
        if state is None:
            return None
        fatal = _console_says_cannot_boot(home, name)
        if fatal is not None:
            raise CannotBoot(fatal)
        done = run.run(ssh_check_argv(state.ssh_port, user, key, command), timeout=timeout, check=False)
        return done.returncode, done.stderr

    return retry_ssh(attempt, " ".join(command), deadline=deadline, clock=clock)


Attempt = Callable[[float], "tuple[int, str] | None"]


class CannotBoot(ToolFailed):
    """Raised by an ssh attempt when the console says the disk will never boot: no use retrying."""


def retry_ssh(attempt: Attempt, what: str, *, deadline: float, clock: Clock,
              sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Try `attempt(timeout)` until it exits 0 or the deadline passes: None on success, else why not.

    An attempt returns (exit code, stderr), None when the VM is gone, or raises ToolFailed when it
    timed out; sshd comes up late in a boot, so refusals and timeouts are retried."""
    last = "no attempt finished"
    while clock() < deadline:
        try:
            outcome = attempt(min(SSH_ATTEMPT_TIMEOUT, max(deadline - clock(), 1.0)))
        except CannotBoot as exc:
            return exc.message
        except ToolFailed as exc:
            last = exc.message
        else:
            if outcome is None:
                return "the VM stopped before ssh answered"
            if outcome[0] == 0:
                return None
            last = f"ssh exited {outcome[0]}: {outcome[1].strip()[-200:]}"
        sleep(SSH_RETRY_PAUSE)
    return f"{what} over ssh did not succeed within the timeout ({last})"


def _console(home: Home, name: str) -> str:
    try:
        text = (vm_dir(home, name) / vmrun.SERIAL).read_text(errors="replace")
    except OSError:
        return ""
    return tail(text)


def promote(home: Home, text: str, *, reason: str | None = None) -> tuple[ImageVersion, list[str]]:
    """Let a pending or failed version into latest without a passing check (recorded as promoted); returns
    the version and warnings (promoting one whose check failed lets latest pick a version that did not boot)."""
    parse_image_ref(text, require_version=True)
    version, _ = get_version(home, text)
    before = version.check.describe() if version.check else "no check required"
    warnings = []
    if version.check is not None and version.check.state == "failed":
        warnings.append(f"{text} failed its boot check ({before[:200]}); promoted, latest can now pick a version "
                        f"that did not boot (imgtool version check {text} checks it again)")
    detail = f"promoted by hand (was: {before[:200]})" + (f": {reason}" if reason else "")
    return update_version(home, text, check=CheckResult("promoted", None, stamp(), None, detail)), warnings
