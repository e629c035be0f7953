"""imgtool's command line: global options, command groups, and how errors are reported.

Errors: one line `imgtool: error: WHAT` plus `  hint: WHAT TO DO` on stderr (and with
--json, an "error" object in the one JSON document on stdout), and the error category's
exit code. A traceback only with --debug. The global options --json, --debug and --home PATH may
be written before or after the command (`imgtool version list g/d --json --home /tmp/h`).
"""

import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
import typer.main
from typer._click import exceptions as clicks

from imgtool import __version__
from imgtool.cli import (
    env_cmds,
    exec_cmds,
    gallery_cmds,
    guest_cmds,
    network_cmds,
    remote_cmds,
    revocation_cmds,
    serve_cmds,
    store_cmds,
    trust_cmds,
    version_cmds,
    vm_cmds,
    vm_settings_cmds,
    warm_cmds,
)
from imgtool.cli.output import State, flush_json
from imgtool.errors import ImgtoolError, InvalidArgument
from imgtool.flows.shapes import error as error_json
from imgtool.home import Home
from store.atomic import translate_os_error

app = typer.Typer(
    name="imgtool",
    help="A local disk-image gallery: capture disk images into a deduplicated store, publish them as "
    "versions of image definitions in galleries, and boot VMs from them under QEMU.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(gallery_cmds.gallery_app, name="gallery")
app.add_typer(gallery_cmds.definition_app, name="definition")
app.add_typer(version_cmds.version_app, name="version")
warm_cmds.register(version_cmds.version_app)
app.add_typer(vm_cmds.vm_app, name="vm")
version_cmds.register(app)
store_cmds.register(app)
remote_cmds.register(app)
trust_cmds.register(app)
guest_cmds.register(app, vm_cmds.vm_app)
vm_settings_cmds.register(vm_cmds.vm_app)
revocation_cmds.register(version_cmds.version_app)
serve_cmds.register(app)
network_cmds.register(app)
exec_cmds.register(vm_cmds.vm_app)
env_cmds.register(app)

_flags = {"json": False, "debug": False}


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"imgtool {__version__}\n")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(
        "--home", help="Data folder (default: $IMGTOOL_HOME, else $XDG_DATA_HOME/imgtool, "
        "else ~/.local/share/imgtool).", show_default=False)] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Log external commands; tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    _flags["json"], _flags["debug"] = json_output, debug
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(message)s", stream=sys.stderr)
    elif sys.stderr.isatty():
        _show_retries()
    ctx.obj = State(Home.at(home), json=json_output, debug=debug)


def _show_retries() -> None:
    """On a terminal, a remote's retries are said as they happen (seconds of waiting are never silent);
    piped, the final error says how many tries were made."""
    retries = logging.getLogger("imgtool.remote.retry")
    if not retries.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("imgtool: %(message)s"))
        retries.addHandler(handler)
    retries.setLevel(logging.INFO)
    retries.propagate = False


GLOBAL_FLAGS = ("--json", "--debug")
GLOBAL_OPTIONS = ("--home",)  # global options that take a value


def hoist_global_flags(argv: list[str]) -> list[str]:
    """Move the global options (--json, --debug, --home PATH) written after the command to the front,
    where the root parser takes them, so every global option works on both sides of the command alike.
    Arguments after `--` (passed through, e.g. to ssh) are left alone."""
    end = argv.index("--") if "--" in argv else len(argv)
    flags: list[str] = []
    options: list[str] = []
    rest: list[str] = []
    i = 0
    while i < end:
        arg = argv[i]
        if arg in GLOBAL_FLAGS:
            flags.append(arg)
        elif arg in GLOBAL_OPTIONS and i + 1 < end:
            options += [arg, argv[i + 1]]
            i += 1
        elif "=" in arg and arg.split("=", 1)[0] in GLOBAL_OPTIONS:
            options.append(arg)
        else:
            rest.append(arg)
        i += 1
    return [*dict.fromkeys(flags), *options, *rest, *argv[end:]]


def tidy_help(command: Any) -> None:
    """Help for people: metavars are names (REF, NAME), not Python types (<str>, <list[str]>), and
    on/off flags do not print their default as a flag name."""
    for param in getattr(command, "params", []):
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            param.show_default = False
        elif param.metavar is None and param.name:
            param.metavar = _metavar(param)
        shown = param.metavar
        if param.param_type_name == "argument":
            param.display_type_rich = lambda ctx: None  # typer would print "<str>" after the name
            usage = shown + ("..." if param.nargs != 1 else "")
            param._usage_display_name = (lambda usage=usage, required=param.required:
                                         usage if required else f"[{usage}]")
        else:
            param.display_type_rich = lambda ctx, shown=shown: shown
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)


def _metavar(param: Any) -> str:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if annotation in (int, float):
        return "N"
    if annotation is Path:
        return "PATH"
    return str(param.name).upper()


def build_command() -> Any:
    built = typer.main.get_command(app)
    tidy_help(built)
    return built


# The store is generic and its hints name no command; here they get the imgtool command that does it.
_STORE_PHRASES = (("a deep verify of the store", "imgtool verify --deep"),
                  ("a verify of the store", "imgtool verify --deep"),
                  ("capture again what a verify lists", "capture again what imgtool verify --deep lists"))
_CATEGORY_COMMANDS = {"corrupt": "imgtool verify --deep names what it affects",
                      "storage-full": "imgtool gc frees what nothing needs"}


def with_command(exc: ImgtoolError) -> ImgtoolError:
    """`exc` with a hint that names an imgtool command (errors raised by the store say what, not how)."""
    if "imgtool " in exc.hint:
        return exc
    hint = exc.hint
    for phrase, command in _STORE_PHRASES:
        hint = hint.replace(phrase, command)
    if "imgtool " not in hint and exc.category in _CATEGORY_COMMANDS:
        hint = f"{hint}; {_CATEGORY_COMMANDS[exc.category]}" if hint else _CATEGORY_COMMANDS[exc.category]
    exc.hint = hint
    return exc


def report(exc: ImgtoolError) -> None:
    exc = with_command(exc)
    if _flags["json"]:
        flush_json(error_json(exc))
    sys.stderr.write(f"imgtool: error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"  hint: {exc.hint}\n")


def run() -> None:
    """Console entry point."""
    argv = hoist_global_flags(sys.argv[1:])
    _flags["json"] = "--json" in argv[:argv.index("--") if "--" in argv else len(argv)]
    try:
        # Usage errors come back to us, to be reported like the rest.
        code = build_command()(argv, prog_name="imgtool", standalone_mode=False)
    except clicks.NoArgsIsHelpError as exc:
        if _flags["json"]:  # a script that forgot the command gets its one document, not the help
            path = exc.ctx.command_path if exc.ctx else "imgtool"
            report(InvalidArgument(f"{path} needs a command", hint=f"see {path} --help"))
            sys.exit(InvalidArgument.exit_code)
        exc.show()  # `imgtool` alone, or a command group alone: its help
        sys.exit(exc.exit_code)
    except clicks.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "imgtool"
        report(InvalidArgument(exc.format_message(), hint=f"see {command} --help"))
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.stderr.write("imgtool: aborted\n")
        sys.exit(1)
    except ImgtoolError as exc:
        if _flags["debug"]:
            traceback.print_exc()
        report(exc)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        if _flags["json"]:
            flush_json({"category": "interrupted", "message": "interrupted", "hint": None, "exit_code": 130})
        sys.stderr.write("imgtool: interrupted; the store is unchanged by unfinished work\n")
        sys.exit(130)
    except OSError as exc:
        # A full or read-only filesystem is the user's situation, not a bug, wherever it surfaces.
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            _internal(exc)
        error = translate_os_error(exc, str(exc.filename or "a file"))
        assert isinstance(error, ImgtoolError)
        if _flags["debug"]:
            traceback.print_exc()
        report(error)
        sys.exit(error.exit_code)
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        _internal(exc)
    flush_json(None)
    sys.exit(code if isinstance(code, int) else 0)  # --help and --version return 0


def _internal(exc: Exception) -> NoReturn:
    if _flags["debug"]:
        traceback.print_exc()
    if _flags["json"]:
        flush_json({"category": "internal", "message": f"{type(exc).__name__}: {exc}",
                    "hint": "run again with --debug for the traceback, and report it", "exit_code": 70})
    sys.stderr.write(f"imgtool: internal error: {type(exc).__name__}: {exc}\n"
                     "  hint: run again with --debug for the traceback, and report it\n")
    sys.exit(70)
