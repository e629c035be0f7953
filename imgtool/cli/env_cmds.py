"""imgtool up / down / status: a test environment (VMs, networks, shares) from one imgtool.yaml."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from imgtool.cli.output import State, emit_json, state, table, warn

if TYPE_CHECKING:
    from imgtool.environment.plan import Plan
    from imgtool.environment.spec import EnvironmentSpec

FILE_HELP = "The environment file (default: ./imgtool.yaml)."


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)


def _load(st: State, file: Path | None, *, check_images: bool) -> "EnvironmentSpec":
    from imgtool.environment import spec
    from imgtool.flows.images import is_remote_image
    from imgtool.gallery import lookup

    def check_image(image: str) -> None:
        if not is_remote_image(image):  # a remote one is looked up when it is pulled
            lookup.get_version(st.home, image)

    return spec.load(file or Path(spec.DEFAULT_FILE), home=st.home.root,
                     check_image=check_image if check_images else None)


def _actions(plan: "Plan") -> list[dict[str, Any]]:
    return [{"action": a.action, "kind": a.kind, "name": a.name, "reason": a.reason,
             "differences": [{"setting": d.setting, "recorded": d.recorded, "wanted": d.wanted}
                             for d in a.differences]} for a in plan.actions]


def _print_plan(actions: list[dict[str, Any]]) -> None:
    table(["action", "kind", "name", "why"], [[a["action"], a["kind"], a["name"], a["reason"]] for a in actions])
    for a in actions:
        for d in a["differences"]:
            print(f"  {a['name']}: {d['setting']}: {d['recorded']!r} -> {d['wanted']!r}")


def up(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option("--file", "-f", help=FILE_HELP)] = None,
    wait: Annotated[bool, typer.Option(help="Return when every VM accepts SSH and its provision script ran.")]
    = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds.")] = 900.0,
    prune: Annotated[bool, typer.Option(help="Delete VMs and networks the file no longer names.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Print the plan; change nothing.")] = False,
) -> None:
    """Make and start what the file describes; a second up changes nothing. Changed VMs are reported, not
    recreated; VMs removed from the file are kept unless --prune."""
    from imgtool.cli.vm_cmds import _local_image
    from imgtool.environment import apply

    st = state(ctx)
    env = _load(st, file, check_images=True)
    if dry_run:
        plan = apply.plan_up(st.home, env, prune=prune)
        actions = _actions(plan)
        emit_json({"project": env.project, "file": str(env.file), "actions": actions}) if st.json \
            else _print_plan(actions)
        return
    result = apply.up(st.home, env, prune=prune, wait=wait, timeout=timeout,
                      resolve=lambda image: _local_image(st, image))
    body = {"project": env.project, "file": str(env.file), "actions": _actions(result.plan),
            "started": result.started, "failed": result.failed, "provisioned": result.provisioned}
    if st.json:
        emit_json(body)
    else:
        _print_up(body)
    if result.failed:
        raise typer.Exit(9)  # ToolFailed's code: some VM did not come up (each said why above)


def _print_up(body: dict[str, Any]) -> None:
    _print_plan(body["actions"])
    for name in body["started"]:
        print(f"started {name}")
    for name, result in body["provisioned"].items():
        if result.get("exit_code") is None:
            continue
        print(f"--- provision {name}{'' if result['ran'] else ' (ran before)'}: exit code {result['exit_code']}")
        print(result["output"].rstrip())
    warn([f"{name}: {why}" for name, why in body["failed"].items()])


def down(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option("--file", "-f", help=FILE_HELP)] = None,
    prune: Annotated[bool, typer.Option(help="Also delete what this environment made that the file no longer "
                                             "names.")] = False,
) -> None:
    """Stop and delete the VMs and networks this environment made (nothing else)."""
    from imgtool.environment import apply

    st = state(ctx)
    env = _load(st, file, check_images=False)
    actions = _actions(apply.down(st.home, env, prune=prune))
    if st.json:
        emit_json({"project": env.project, "file": str(env.file), "actions": actions})
        return
    _print_plan(actions) if actions else print(f"nothing of environment {env.project} exists")


def status(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Option("--file", "-f", help=FILE_HELP)] = None,
) -> None:
    """The environment's VMs (state, addresses, provisioning) and what `up` would do now."""
    from imgtool.environment import apply

    st = state(ctx)
    env = _load(st, file, check_images=False)
    rows = apply.status(st.home, env)
    actions = _actions(apply.plan_up(st.home, env))
    if st.json:
        emit_json({"project": env.project, "file": str(env.file), "actions": actions, "vms": rows})
        return
    table(["vm", "state", "networks", "provisioned"],
          [[r["name"], r["state"], ", ".join(f"{n['network']} {n['address']}" for n in r["networks"]),
            r["provisioned"]] for r in rows])
    pending = [a for a in actions if a["action"] not in ("unchanged",)]
    if pending:
        print("up would:")
        _print_plan(pending)
