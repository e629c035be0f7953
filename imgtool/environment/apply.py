"""`imgtool up / down / status`: the plan of imgtool.environment.plan, executed.

Contracts:
- Nothing is made or deleted while the plan has a conflict (a same-named VM or network made by
  hand or by another environment): `up` raises Refused naming them all first.
- Order: networks, then VMs (created one after another: each takes its address under the networks
  lock), then every VM of the file that is not running is started, in parallel; with prune, VMs the
  file no longer names are deleted before the networks they were on.
- A killed `up` leaves what it finished; the next `up` sees those as unchanged, reclaims a VM
  folder without a record (imgtool.vm.lifecycle._claim) and goes on. A VM is made and recorded
  with its project, so `down` deletes exactly what `up` made.
- Provision scripts run once, after SSH answers (and cloud-init is done, for a seeded VM), only with
  `wait`: `sudo sh -s` with the script on stdin; `provisioned.json` in the VM folder (exit code,
  output tail) marks it done, also when it failed (it is reported, not re-run: delete the VM to run
  it again).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from imgtool.clock import stamp
from imgtool.environment import plan as plans
from imgtool.environment.plan import Existing, NetworkSettings, Plan, VmSettings
from imgtool.environment.spec import EnvironmentSpec, VmSpec
from imgtool.errors import Corrupt, ImgtoolError, NotFound, Refused
from imgtool.guest import ssh
from imgtool.home import Home
from imgtool.net import networks
from imgtool.vm import lifecycle, runtime
from imgtool.vm import record as vmrecord
from store import atomic

PROVISIONED = "provisioned.json"
MAX_OUTPUT = 64 * 1024  # of a provision script's output kept and shown


def existing(home: Home) -> list[Existing]:
    """Every VM and network, with the project that made it and its settings (from their records)."""
    found = [Existing("network", n.name, n.project, NetworkSettings(str(n.subnet))) for n in networks.list_all(home)]
    for record in vmrecord.load_records(home):
        env = record.environment or {}
        project = env.get("project") if isinstance(env.get("project"), str) else None
        settings = None
        if project is not None and isinstance(env.get("settings"), dict):
            try:
                settings = VmSettings.from_json(env["settings"], f"VM '{record.name}' environment settings")
            except Corrupt:
                settings = None  # reported as changed: "its record holds no settings to compare"
        found.append(Existing("vm", record.name, project, settings))
    return found


def plan_up(home: Home, spec: EnvironmentSpec, *, prune: bool = False) -> Plan:
    return plans.reconcile(spec, existing(home), prune=prune)


def plan_down(home: Home, spec: EnvironmentSpec, *, prune: bool = False) -> Plan:
    return plans.teardown(spec, existing(home), prune=prune)


@dataclass
class UpResult:
    plan: Plan
    started: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # VM -> why it did not start
    provisioned: dict[str, dict[str, Any]] = field(default_factory=dict)  # VM -> {exit_code, output, ran}


ImageResolver = Callable[[str], str]  # image as written -> a local G/D@X.Y.Z (a remote one is pulled)


def up(home: Home, spec: EnvironmentSpec, *, prune: bool = False, resolve: ImageResolver = lambda i: i,
       wait: bool = False, timeout: float = 900.0) -> UpResult:
    """Bring the environment to what `spec` says (see the module docstring)."""
    plan = plan_up(home, spec, prune=prune)
    if plan.conflicts:
        raise Refused("; ".join(a.reason for a in plan.conflicts),
                      hint="rename those in the file (or its name:), or delete them if they are leftovers")
    for action in plan.of("delete"):
        if action.kind == "vm":
            lifecycle.delete(home, action.name)
    for action in plan.of("create"):
        if action.network is not None:
            networks.create(home, action.network.full_name, project=spec.project, clock=stamp,
                            subnet=str(action.network.subnet) if action.network.subnet else None)
    for action in plan.of("create"):
        if action.vm is not None:
            lifecycle.create(home, new_vm(spec, action.vm, resolve(action.vm.image)))
    for action in plan.of("delete"):
        if action.kind == "network":
            networks.delete(home, action.name, used_by=[r.name for r in vmrecord.vms_on_network(home, action.name)])
    result = UpResult(plan)
    _start_all(home, [v.full_name for v in spec.vms], result)
    if wait:
        _provision_all(home, spec, result, timeout)
    return result


def new_vm(spec: EnvironmentSpec, vm: VmSpec, image: str) -> lifecycle.NewVm:
    """vm new's request for a VM of the file, recording its project and settings on the VM."""
    full = {n.name: n.full_name for n in spec.networks}
    return lifecycle.NewVm(
        name=vm.full_name, image=image, cpus=vm.cpus, memory_mib=vm.memory_mib, hostname=vm.hostname or vm.name,
        admin_user=vm.admin_user, ssh_key=vm.ssh_key, user_data=vm.user_data,
        ignore_recommendations=vm.ignore_recommendations, disk_size=vm.disk_size, forwards=vm.forwards,
        allow_revoked=vm.allow_revoked, shares=vm.shares,
        networks=tuple((full[a.network], None if a.address is None else str(a.address)) for a in vm.networks),
        environment={"project": spec.project, "settings": VmSettings.of(vm).to_json()})


def _start_all(home: Home, names: list[str], result: UpResult) -> None:
    todo = [n for n in names if not runtime.is_running(home, n)]

    def start(name: str) -> str | None:
        try:
            runtime.start(home, name)
        except ImgtoolError as exc:
            return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(len(todo), 8))) as pool:
        for name, problem in zip(todo, pool.map(start, todo), strict=True):
            if problem is None:
                result.started.append(name)
            else:
                result.failed[name] = problem


def _provision_all(home: Home, spec: EnvironmentSpec, result: UpResult, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    running = [v for v in spec.vms if v.full_name not in result.failed]

    def ready(vm: VmSpec) -> dict[str, Any]:
        # A seeded guest is ready once cloud-init is done: its shares are mounted, its NICs configured.
        seeded = vmrecord.load(home, vm.full_name).seed is not None
        ssh.wait(home, vm.full_name, timeout=max(deadline - time.monotonic(), 1.0), cloud_init=seeded)
        return provision(home, vm) if vm.provision is not None else {"ran": False, "exit_code": None, "output": ""}

    with ThreadPoolExecutor(max_workers=max(1, min(len(running), 8))) as pool:
        futures = {vm.full_name: pool.submit(ready, vm) for vm in running}
    for name, future in futures.items():
        try:
            result.provisioned[name] = future.result()
        except ImgtoolError as exc:
            result.failed[name] = exc.message


def provision(home: Home, vm: VmSpec) -> dict[str, Any]:
    """Run the VM's provision script once (as root); what it did, from the mark if it ran before."""
    mark = vmrecord.vm_dir(home, vm.full_name) / PROVISIONED
    if mark.exists():
        body: dict[str, Any] = json.loads(mark.read_text())
        return {**body, "ran": False}
    assert vm.provision is not None
    done = ssh.run_in(home, vm.full_name, ["sudo", "sh", "-s"], input=vm.provision.encode(), timeout=3600.0,
                      check=False)
    output = (done.stdout + done.stderr)[-MAX_OUTPUT:]
    body = {"exit_code": done.returncode, "output": output, "finished": stamp()}
    atomic.replace(mark, json.dumps(body).encode(), mode=0o600)
    return {**body, "ran": True}


def down(home: Home, spec: EnvironmentSpec, *, prune: bool = False) -> Plan:
    """Delete what this environment made (VMs, then networks); nothing else."""
    plan = plan_down(home, spec, prune=prune)
    for action in plan.of("delete"):
        if action.kind == "vm":
            try:
                lifecycle.delete(home, action.name)
            except NotFound:
                continue
    for action in plan.of("delete"):
        if action.kind == "network":
            networks.delete(home, action.name, used_by=[r.name for r in vmrecord.vms_on_network(home, action.name)])
    return plan


def status(home: Home, spec: EnvironmentSpec) -> list[dict[str, Any]]:
    """Each VM of the file: whether it exists (made by this environment), its state, addresses, provisioning."""
    rows = []
    mine = {e.name: e for e in existing(home) if e.kind == "vm"}
    for vm in spec.vms:
        found = mine.get(vm.full_name)
        row: dict[str, Any] = {"name": vm.full_name, "exists": found is not None,
                               "made_here": bool(found and found.project == spec.project), "state": "absent",
                               "networks": [], "provisioned": None}
        if found is not None:
            record = vmrecord.load(home, vm.full_name)
            row["state"] = runtime.status(home, vm.full_name)["state"]
            row["networks"] = [{"network": n.network, "address": n.address} for n in record.networks]
            mark = vmrecord.vm_dir(home, vm.full_name) / PROVISIONED
            row["provisioned"] = json.loads(mark.read_text()).get("exit_code") if mark.exists() else None
        rows.append(row)
    return rows
