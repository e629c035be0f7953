"""VM options as users type them, checked where they are given: sizes, port forwards, vCPUs, memory.

A value that can never work is refused here, at `vm new` or `vm update`, with the rule in the
message, rather than by QEMU at the next `vm start`.
"""

from __future__ import annotations

import re

from imgtool.errors import InvalidArgument
from imgtool.tools.qemu import MIN_MEMORY_MIB
from imgtool.vm.record import Forward

MAX_CPUS = 255  # QEMU's q35/virt limit without extra topology options
MAX_MEMORY_MIB = 16 * 1024 * 1024  # 16 TiB: beyond any host this runs on; refuses typos like 1e12
MAX_DISK_SIZE = 64 << 40  # qcow2 handles more, but a larger OS disk is a typo here
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30,
          "gib": 1 << 30, "t": 1 << 40, "tib": 1 << 40}
SIZE_RULE = "a size like 20G, 512M or 1T (K, M, G, T are powers of 1024; a plain number is bytes)"


def parse_size(text: str, what: str = "--disk-size") -> int:
    match = re.fullmatch(r"([0-9]{1,15})\s*([A-Za-z]*)", text.strip())
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise InvalidArgument(f"{what} '{text}' is not {SIZE_RULE}", hint=f"e.g. {what} 20G")
    size = int(match.group(1)) * _UNITS[unit]
    if not 0 < size <= MAX_DISK_SIZE:
        raise InvalidArgument(f"{what} '{text}' is out of range (1 byte .. 64T)", hint=f"e.g. {what} 20G")
    return size


def parse_forward(text: str) -> Forward:
    """HOST:GUEST -> a forward from 127.0.0.1:HOST to the guest's GUEST (TCP)."""
    match = re.fullmatch(r"([0-9]{1,5}):([0-9]{1,5})", text)
    host, guest = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not match or not 1024 <= host <= 65535 or not 1 <= guest <= 65535:
        raise InvalidArgument(f"--forward '{text}' is not HOST:GUEST",
                              hint="HOST is a port 1024..65535 on 127.0.0.1, GUEST a port 1..65535 in the guest, "
                                   "e.g. --forward 8080:80")
    return Forward(host, guest)


def check_forwards(forwards: tuple[Forward, ...]) -> tuple[Forward, ...]:
    hosts = [f.host for f in forwards]
    twice = sorted({h for h in hosts if hosts.count(h) > 1})
    if twice:
        raise InvalidArgument(f"host port {', '.join(map(str, twice))} is forwarded more than once",
                              hint="each --forward needs its own host port")
    guests = [f.guest for f in forwards]
    if 22 in guests:
        raise InvalidArgument("guest port 22 is already forwarded (imgtool vm ssh uses it)",
                              hint="imgtool vm show NAME prints the SSH port")
    return tuple(sorted(forwards, key=lambda f: f.host))


def check_cpus(cpus: int) -> int:
    if not 1 <= cpus <= MAX_CPUS:
        raise InvalidArgument(f"--cpus {cpus} is out of range: a VM has 1..{MAX_CPUS} vCPUs", hint="e.g. --cpus 2")
    return cpus


def check_memory(memory_mib: int) -> int:
    if not MIN_MEMORY_MIB <= memory_mib <= MAX_MEMORY_MIB:
        raise InvalidArgument(f"--memory {memory_mib} is out of range: a VM has {MIN_MEMORY_MIB}..{MAX_MEMORY_MIB} "
                              "MiB", hint="memory is in MiB, e.g. --memory 1024")
    return memory_mib
