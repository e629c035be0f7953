"""What `up` and `down` must do, as a plan computed from the file and what exists (pure module).

Inputs are values: the parsed file (imgtool.environment.spec) and, for each VM and network that
exists, its name, the project that made it (None: made by hand) and the settings it was made with
(recorded on it by `up`). Nothing is read or changed here; `up` executes the plan, `--dry-run` prints
it, and its tests compare plans.

Rules:
- A VM or network of the file that does not exist: create (networks first, so VMs can join them).
- One that exists, made by this project: unchanged when its recorded settings equal the file's,
  else changed, with each differing setting. A changed VM is reported, never recreated behind the
  user's back: its disk may hold work (delete it, or `down` and `up`, to apply).
- One that exists but was not made by this project: a conflict; `up` must refuse before acting.
- One made by this project that the file no longer names: deleted only with prune (VMs before
  networks), else reported as kept.
- `down` deletes what the project made (and, with prune, what it made that the file no longer names);
  never anything else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from imgtool.environment.spec import EnvironmentSpec, NetworkSpec, VmSpec
from imgtool.errors import Corrupt
from imgtool.records import Fields, JsonObject

Kind = Literal["vm", "network"]
ActionName = Literal["create", "unchanged", "changed", "conflict", "delete", "keep"]


@dataclass(frozen=True)
class VmSettings:
    """What a VM was made with, in the words of the file (written on the VM's record by `up`)."""

    image: str  # as written (team/base@latest), not as resolved: latest moving on is not a change
    cpus: int | None = None
    memory_mib: int | None = None
    disk_size: int | None = None
    hostname: str | None = None
    admin_user: str | None = None
    ssh_key: str | None = None
    user_data_digest: str | None = None
    ignore_recommendations: bool = False
    allow_revoked: bool = False
    shares: tuple[str, ...] = ()
    forwards: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()  # NAME[:ADDRESS] as in the file
    provision_digest: str | None = None

    @classmethod
    def of(cls, vm: VmSpec) -> VmSettings:
        provision = hashlib.sha256(vm.provision.encode()).hexdigest() if vm.provision is not None else None
        return cls(image=vm.image, cpus=vm.cpus, memory_mib=vm.memory_mib, disk_size=vm.disk_size,
                   hostname=vm.hostname, admin_user=vm.admin_user,
                   ssh_key=str(vm.ssh_key) if vm.ssh_key else None, user_data_digest=vm.user_data_digest,
                   ignore_recommendations=vm.ignore_recommendations, allow_revoked=vm.allow_revoked,
                   shares=tuple(map(str, vm.shares)), forwards=tuple(f"{f.host}:{f.guest}" for f in vm.forwards),
                   networks=tuple(map(str, vm.networks)), provision_digest=provision)

    def to_json(self) -> JsonObject:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}

    @classmethod
    def from_json(cls, obj: JsonObject, what: str) -> VmSettings:
        """From a VM record (strictly: Corrupt for an unknown, missing or mistyped field)."""
        if not isinstance(obj, dict):
            raise Corrupt(f"{what} is not a JSON object", hint="the record is damaged")
        unknown = set(obj) - {f.name for f in fields(cls)}
        if unknown:
            raise Corrupt(f"{what} has unknown fields {sorted(unknown)}", hint="upgrade imgtool to read it")
        f = Fields(obj, what)
        return cls(image=f.text("image"), cpus=f.opt_integer("cpus"), memory_mib=f.opt_integer("memory_mib"),
                   disk_size=f.opt_integer("disk_size"), hostname=f.opt_text("hostname"),
                   admin_user=f.opt_text("admin_user"), ssh_key=f.opt_text("ssh_key"),
                   user_data_digest=f.opt_text("user_data_digest"),
                   ignore_recommendations=f.flag("ignore_recommendations"), allow_revoked=f.flag("allow_revoked"),
                   shares=f.texts("shares"), forwards=f.texts("forwards"), networks=f.texts("networks"),
                   provision_digest=f.opt_text("provision_digest"))


@dataclass(frozen=True)
class NetworkSettings:
    subnet: str | None  # None in the file: any subnet the network got is fine


@dataclass(frozen=True)
class Existing:
    """A VM or network that exists now, as its record tells."""

    kind: Kind
    name: str  # full name (PROJECT-NAME)
    project: str | None  # the environment that made it; None: made by hand
    settings: VmSettings | NetworkSettings | None = None  # None: made by hand, or a record without them


@dataclass(frozen=True)
class Difference:
    setting: str
    recorded: Any
    wanted: Any


@dataclass(frozen=True)
class Action:
    action: ActionName
    kind: Kind
    name: str  # full name
    reason: str = ""
    differences: tuple[Difference, ...] = ()
    vm: VmSpec | None = None  # create: what to make
    network: NetworkSpec | None = None


@dataclass(frozen=True)
class Plan:
    project: str
    actions: tuple[Action, ...]

    def of(self, *names: ActionName) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.action in names)

    @property
    def conflicts(self) -> tuple[Action, ...]:
        return self.of("conflict")

    @property
    def is_noop(self) -> bool:
        """Nothing to create or delete (a changed VM is reported, not acted on)."""
        return not self.of("create", "delete")


def reconcile(spec: EnvironmentSpec, existing: Iterable[Existing], *, prune: bool = False) -> Plan:
    """The plan of `up` for `spec`, given what exists (see the module docstring)."""
    index = {(e.kind, e.name): e for e in existing}
    networks = [_network_action(n, index.get(("network", n.full_name)), spec.project) for n in spec.networks]
    vms = [_vm_action(v, index.get(("vm", v.full_name)), spec.project) for v in spec.vms]
    wanted = {("network", n.full_name) for n in spec.networks} | {("vm", v.full_name) for v in spec.vms}
    leftovers = [e for e in existing if e.project == spec.project and (e.kind, e.name) not in wanted]
    gone = [Action("delete" if prune else "keep", e.kind, e.name,
                   "no longer in the file" + ("" if prune else ": kept (up --prune deletes it)"))
            for e in sorted(leftovers, key=_vms_first)]
    return Plan(spec.project, (*networks, *vms, *gone))


def teardown(spec: EnvironmentSpec, existing: Iterable[Existing], *, prune: bool = False) -> Plan:
    """The plan of `down`: delete what this project made for the file (with prune, also what it made
    that the file no longer names), VMs before networks; a same-named thing made by hand is kept."""
    wanted = {("network", n.full_name) for n in spec.networks} | {("vm", v.full_name) for v in spec.vms}
    actions = []
    for e in sorted(existing, key=_vms_first):
        named = (e.kind, e.name) in wanted
        if e.project == spec.project and (named or prune):
            actions.append(Action("delete", e.kind, e.name, "made by this environment"))
        elif named:
            actions.append(Action("keep", e.kind, e.name, "not made by this environment"))
    return Plan(spec.project, tuple(actions))


def _vms_first(e: Existing) -> tuple[int, str]:
    return (0 if e.kind == "vm" else 1, e.name)


def _conflict(kind: Kind, name: str, found: Existing) -> Action:
    who = f"environment '{found.project}'" if found.project else "hand (not by an environment)"
    return Action("conflict", kind, name, f"a {kind} named {name} exists, made by {who}")


def _network_action(wanted: NetworkSpec, found: Existing | None, project: str) -> Action:
    if found is None:
        return Action("create", "network", wanted.full_name, network=wanted)
    if found.project != project:
        return _conflict("network", wanted.full_name, found)
    recorded = found.settings.subnet if isinstance(found.settings, NetworkSettings) else None
    if wanted.subnet is not None and recorded != str(wanted.subnet):
        return Action("changed", "network", wanted.full_name, "its subnet differs",
                      (Difference("subnet", recorded, str(wanted.subnet)),), network=wanted)
    return Action("unchanged", "network", wanted.full_name, network=wanted)


def _vm_action(wanted: VmSpec, found: Existing | None, project: str) -> Action:
    if found is None:
        return Action("create", "vm", wanted.full_name, vm=wanted)
    if found.project != project:
        return _conflict("vm", wanted.full_name, found)
    settings = VmSettings.of(wanted)
    if not isinstance(found.settings, VmSettings):
        return Action("changed", "vm", wanted.full_name, "its record holds no settings to compare", vm=wanted)
    differences = tuple(Difference(f.name, getattr(found.settings, f.name), getattr(settings, f.name))
                        for f in fields(VmSettings) if getattr(found.settings, f.name) != getattr(settings, f.name))
    if differences:
        names = ", ".join(d.setting for d in differences)
        return Action("changed", "vm", wanted.full_name, f"{names} differ: delete the VM (or down, then up) to apply",
                      differences, vm=wanted)
    return Action("unchanged", "vm", wanted.full_name, vm=wanted)
