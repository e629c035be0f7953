"""Which accelerator to run guests with, proven by booting a real guest, and host firmware paths.

/dev/kvm answering ioctls does not mean KVM guests run: on some hosts (nested
virtualisation, sandboxes) a Linux guest under KVM seems to hang right after
"Booting from ROM". Measured on such a host, KVM did run guest code, but about a
thousand times slower than TCG (a few million loop iterations per second), so a
guest that only prints a string passes while a kernel never gets anywhere. The
probe therefore makes the guest work before it speaks: a 512-byte boot sector
spins WORK_LOOPS iterations, writes a marker to COM1 and halts. The accelerator
is usable iff the marker reaches the serial file within the timeout.

Precedence in `choose_accel`: the `requested` argument, then the IMGTOOL_ACCEL
environment variable, then the cached probe answer, then a fresh probe. The cache
(`<cache_dir>/accel.json`) is keyed by the host kernel release, the QEMU version
string and the /dev/kvm device number, so a kernel or QEMU upgrade re-probes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from pathlib import Path

from imgtool.errors import InvalidArgument, ToolMissing
from imgtool.tools import run
from imgtool.tools.qemu import ACCELS, escape, qemu_binary

log = logging.getLogger("imgtool.accel")

ENV_VAR = "IMGTOOL_ACCEL"
CACHE_FILE = "accel.json"
KVM_DEVICE = Path("/dev/kvm")
PROBE_TIMEOUT = 8.0
MARKER = b"IMGTOOL-ACCEL-OK"
# Busy-loop iterations before the marker: ~50 ms on working KVM, well under a
# second under TCG, but far beyond the timeout on a KVM that traps every instruction.
WORK_LOOPS = 50_000_000
OVMF_DIR = Path("/usr/share/OVMF")

# Only plain accelerator names reach QEMU's option parser (no ",prop=...").
_ACCEL_NAME = re.compile(r"[a-z][a-z0-9-]*")
_POLL_SECONDS = 0.05


# --- the probe guest --------------------------------------------------------


def boot_sector(marker: bytes = MARKER) -> bytes:
    """A 512-byte MBR boot sector that spins, prints `marker` + CRLF on COM1 (port 0x3f8) and halts.

    Assembled by hand (16-bit real mode, loaded at 0000:7C00):
        cli; xor ax,ax; mov ds,ax; cld      ; DS=0 so the absolute message address works
        mov ecx, WORK_LOOPS
    spin: dec ecx; jnz spin                 ; the work a crippled accelerator cannot finish
        mov si, msg; mov dx, 0x3f8
    next: lodsb; test al,al; jz halt; out dx,al; jmp next
    halt: hlt; jmp halt
    msg:  marker, CR, LF, NUL
    QEMU's UART accepts bytes without any initialisation, so no setup is needed.
    """
    code = bytearray(b"\xfa\x31\xc0\x8e\xd8\xfc")
    code += b"\x66\xb9" + WORK_LOOPS.to_bytes(4, "little")  # mov ecx, WORK_LOOPS
    code += b"\x66\x49\x75\xfc"  # spin: dec ecx; jnz spin
    si_operand = len(code) + 1
    code += b"\xbe\x00\x00"  # mov si, imm16 (patched below)
    code += b"\xba\xf8\x03"  # mov dx, 0x3f8
    loop = len(code)
    code += b"\xac\x84\xc0\x74\x03\xee"  # lodsb; test al,al; jz +3; out dx,al
    code += bytes([0xEB, (loop - (len(code) + 2)) & 0xFF])  # jmp next
    halt = len(code)
    code += b"\xf4"  # hlt
    code += bytes([0xEB, (halt - (len(code) + 2)) & 0xFF])  # jmp halt
    code[si_operand : si_operand + 2] = (0x7C00 + len(code)).to_bytes(2, "little")
    code += marker + b"\r\n\x00"
    if len(code) > 510:
        raise ValueError("marker too long for a boot sector")
    return bytes(code).ljust(510, b"\x00") + b"\x55\xaa"


def probe_argv(accel: str, boot: Path, serial: Path) -> list[str]:
    """The QEMU command line booting the probe sector under `accel` (x86 only)."""
    return [
        qemu_binary("x86_64"),
        "-machine", "pc",
        "-accel", accel,
        "-m", "16M",
        "-display", "none",
        "-nodefaults",
        "-no-user-config",
        "-chardev", f"file,id=serial0,path={escape(serial)}",
        "-serial", "chardev:serial0",
        "-drive", f"file={escape(boot)},format=raw,if=ide",
    ]  # fmt: skip


def probe(accel: str, workdir: Path, *, timeout: float = PROBE_TIMEOUT) -> bool:
    """True iff a tiny x86 guest under `accel` prints the marker within `timeout` seconds.

    The guest is stopped as soon as the marker appears, or when the time is up.
    Never raises for a broken accelerator (unknown name, QEMU refusing it, guest
    hanging or dying): that is a False. A missing QEMU raises ToolMissing.
    """
    if not _ACCEL_NAME.fullmatch(accel):
        return False
    workdir.mkdir(parents=True, exist_ok=True)
    boot = workdir / "accel-probe.img"
    serial = workdir / "accel-probe.out"
    boot.write_bytes(boot_sector())
    serial.unlink(missing_ok=True)
    guest = run.spawn(probe_argv(accel, boot, serial), tethered=True)
    try:
        ok = _wait_for_marker(guest, serial, timeout)
    finally:
        _stop(guest)
    log.debug("accelerator probe %s: %s", accel, "ok" if ok else "failed")
    return ok


def _wait_for_marker(guest: run.Background, serial: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if _has_marker(serial):
            return True
        if not guest.alive():
            return _has_marker(serial)  # it may have printed just before exiting
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_SECONDS)


def _stop(guest: run.Background) -> None:
    guest.stop()  # never raises: a guest that died of our SIGTERM first is stopped all the same


def _has_marker(serial: Path) -> bool:
    try:
        return MARKER in serial.read_bytes()
    except FileNotFoundError:
        return False


# --- choosing ---------------------------------------------------------------


def kvm_usable() -> bool:
    """/dev/kvm exists, is a character device and we may open it read-write."""
    try:
        st = KVM_DEVICE.stat()
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.access(KVM_DEVICE, os.R_OK | os.W_OK)


def _check_name(value: str, source: str) -> str:
    if value not in ACCELS:
        raise InvalidArgument(f"{source} asks for accelerator {value!r}", hint=f"use one of {', '.join(ACCELS)}")
    if value == "kvm" and not kvm_usable():
        raise InvalidArgument(
            f"{source} asks for kvm but {KVM_DEVICE} is missing or not accessible",
            hint="use tcg, or load the kvm module and check the permissions of /dev/kvm",
        )
    return value


def choose_accel(cache_dir: Path, *, requested: str | None = None, arch: str = "x86_64") -> str:
    """Return "kvm" or "tcg" for guests of `arch`; see the module docstring for the precedence.

    `requested` (or IMGTOOL_ACCEL) naming something else than kvm/tcg, or kvm
    without a usable /dev/kvm, raises InvalidArgument. Without an override, KVM is
    chosen only when a probe guest really ran under it; guests of a foreign
    architecture, and non-x86 guests (the probe is an x86 boot sector), get tcg.
    """
    qemu_binary(arch)
    if requested is not None:
        return _check_name(requested, "the request")
    from_env = os.environ.get(ENV_VAR)
    if from_env:
        return _check_name(from_env, ENV_VAR)
    if arch != "x86_64" or os.uname().machine != "x86_64" or not kvm_usable():
        return "tcg"
    key = cache_key()
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        return cached
    cache_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="accel-probe-", dir=cache_dir))
    try:
        answer = "kvm" if probe("kvm", workdir) else "tcg"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _write_cache(cache_dir, key, answer)
    return answer


def cache_key() -> dict[str, str]:
    """What the probe answer depends on: kernel, QEMU build and the KVM device."""
    try:
        st = KVM_DEVICE.stat()
        kvm = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    except OSError:
        kvm = "absent"
    return {"kernel": os.uname().release, "qemu": qemu_version(), "kvm": kvm}


def qemu_version(arch: str = "x86_64") -> str:
    """The first line of `qemu-system-<arch> --version`."""
    result = run.run([qemu_binary(arch), "--version"], timeout=30)
    lines = result.stdout.strip().splitlines()
    return lines[0] if lines else ""


def _read_cache(cache_dir: Path, key: dict[str, str]) -> str | None:
    try:
        data = json.loads((cache_dir / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None  # no cache or an unreadable one: probe again
    if not isinstance(data, dict) or data.get("key") != key or data.get("accel") not in ACCELS:
        return None
    answer: str = data["accel"]
    return answer


def _write_cache(cache_dir: Path, key: dict[str, str], answer: str) -> None:
    path = cache_dir / CACHE_FILE
    tmp = path.with_name(f".{CACHE_FILE}.{secrets.token_hex(4)}.tmp")
    record = {"key": key, "accel": answer, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --- firmware ---------------------------------------------------------------


def ovmf_paths(root: Path = OVMF_DIR) -> tuple[Path, Path]:
    """(code, vars template) of the host's 4M OVMF build. Touches the filesystem.

    The vars file is a template: each VM needs its own writable copy.
    """
    code, template = root / "OVMF_CODE_4M.fd", root / "OVMF_VARS_4M.fd"
    missing = [p for p in (code, template) if not p.is_file()]
    if missing:
        raise ToolMissing(
            f"UEFI firmware not found: {', '.join(str(p) for p in missing)}",
            hint="apt-get install ovmf",
        )
    return code, template
