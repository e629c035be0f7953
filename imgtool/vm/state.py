"""A VM's runtime facts: `state.json` (what the last `vm start` chose) and whether its QEMU is alive.

Kept apart from the runtime (QEMU, QMP, the accelerator) so that capturing a VM's disk, which only
needs to know the VM is stopped, does not import the machinery that runs it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from imgtool.errors import Corrupt
from imgtool.home import Home
from imgtool.records import Fields, JsonObject
from imgtool.vm.record import Forward, vm_dir

STATE = "state.json"
_REQUIRED = ("pid", "accel", "ssh_port", "qmp", "started", "qemu_argv")
_OPTIONAL = ("warm", "forwards")  # warm: only `vm new --warm` writes it; forwards: absent before port forwards


@dataclass(frozen=True)
class RunState:
    """What one start chose (docs/STORE-FORMAT.md, state.json)."""

    pid: int
    accel: str
    ssh_port: int
    qmp: str  # the QMP socket's path
    started: str
    qemu_argv: tuple[str, ...]
    forwards: tuple[Forward, ...] = ()
    warm: str | None = None  # the warm state's folder name, when restored from one

    def to_json(self) -> JsonObject:
        """The bytes' order every release wrote: the start's facts, `warm` (if any), `forwards` last."""
        body: JsonObject = {"pid": self.pid, "accel": self.accel, "ssh_port": self.ssh_port, "qmp": self.qmp,
                            "started": self.started, "qemu_argv": list(self.qemu_argv)}
        if self.warm is not None:
            body["warm"] = self.warm
        body["forwards"] = [{"host": f.host, "guest": f.guest} for f in self.forwards]
        return body

    def dumps(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode()

    @classmethod
    def from_json(cls, obj: object, what: str) -> RunState:
        if not isinstance(obj, dict):
            raise _damaged(what, "is not a JSON object")
        unknown = set(obj) - {*_REQUIRED, *_OPTIONAL}
        if unknown:
            raise _damaged(what, f"has unknown fields {sorted(unknown)}")
        f = Fields(obj, what)
        f.items("qemu_argv")  # required (texts alone would take a missing list as empty)
        argv = f.texts("qemu_argv")
        forwards = f.each("forwards", _forward) if "forwards" in obj else ()
        return cls(f.integer("pid"), f.text("accel"), f.integer("ssh_port"), f.text("qmp"), f.text("started"),
                   argv, forwards, f.opt_text("warm"))


def _forward(obj: JsonObject, what: str) -> Forward:
    f = Fields(obj, what)
    if set(obj) != {"host", "guest"}:
        raise _damaged(what, "must be exactly {host, guest}")
    return Forward(f.integer("host"), f.integer("guest"))


def _damaged(what: str, why: str) -> Corrupt:
    return Corrupt(f"{what} {why}", hint=f"if no QEMU runs for this VM, delete {what} (the next start writes it "
                                          "again); otherwise stop that QEMU first")


def read(folder: Path) -> RunState | None:
    """The last start's state, or None when there is none (never started, or stopped).

    Raises Corrupt naming the file when it is not a state imgtool wrote."""
    path = folder / STATE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Corrupt(f"{path} cannot be read: {exc.strerror}", hint="check the VM folder's permissions") from None
    try:
        value = json.loads(data)
    except ValueError:
        raise _damaged(str(path), "is not JSON") from None
    return RunState.from_json(value, str(path))


def qemu_alive(pid: int) -> bool:
    """Whether `pid` is a live QEMU process (a reused pid of another program is not)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline


def running_state(home: Home, name: str) -> RunState | None:
    """The state of a running VM, or None when it is stopped."""
    state = read(vm_dir(home, name))
    return state if state and qemu_alive(state.pid) else None


def is_running(home: Home, name: str) -> bool:
    return running_state(home, name) is not None
