"""imgtool vm exec / vm cp: a command in the guest, files in and out (over the VM's SSH)."""

import sys
from typing import Annotated

import typer

from imgtool.cli.output import emit_json, state


def register(vm_app: typer.Typer) -> None:
    vm_app.command("exec")(vm_exec)
    vm_app.command("cp")(vm_cp)


def vm_exec(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="VM name.")],
    command: Annotated[list[str], typer.Argument(metavar="-- CMD [ARG]...", help="The command and its arguments.")],
    user: Annotated[str | None, typer.Option(help="Run it as this guest user (through sudo from the admin user).")]
    = None,
    env: Annotated[list[str] | None, typer.Option(metavar="K=V", help="Set an environment variable (repeatable).")]
    = None,
    workdir: Annotated[str | None, typer.Option(metavar="DIR", help="Run it in this guest folder.")] = None,
    tty: Annotated[bool, typer.Option("--tty", "-t", help="Give it a terminal (for interactive programs).")] = False,
) -> None:
    """Run a command in a running VM over SSH; stdin, stdout and stderr pass through and the exit code is the
    command's. If ssh itself fails (no answer, host key changed, key refused) the error says so, exit code 13."""
    from imgtool.guest import commands

    st = state(ctx)
    request = commands.Command(tuple(command), user=user, env=tuple(map(commands.parse_env, env or [])),
                               workdir=workdir)
    code = commands.execute(st.home, name, request, tty=tty)
    if st.json:
        emit_json({"vm": name, "exit_code": code})
    sys.stdout.flush()
    raise typer.Exit(code)


def vm_cp(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(metavar="SRC... DST", help="Local paths and NAME:PATH in a VM; "
                                                                            "the last one is the destination.")],
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy folders with what they hold.")] = False,
) -> None:
    """Copy files between this machine and a running VM (NAME:PATH on one side), keeping modes and times."""
    from imgtool.errors import InvalidArgument
    from imgtool.guest import commands
    from imgtool.vm import lifecycle

    st = state(ctx)
    if len(paths) < 2:
        raise InvalidArgument("vm cp needs at least one source and a destination",
                              hint="e.g. imgtool vm cp ./build.tar web:/tmp/")
    vms = set(lifecycle.list_names(st.home))
    places = [commands.parse_place(p, vms) for p in paths]
    commands.copy(st.home, places[:-1], places[-1], recursive=recursive)
    if st.json:
        emit_json({"copied": paths[:-1], "to": paths[-1]})
    else:
        print(f"copied {len(paths) - 1} item{'s' if len(paths) > 2 else ''} to {paths[-1]}")
