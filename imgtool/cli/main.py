"""imgtool's command line: global options, command groups, and how errors are reported.

Errors: one line `imgtool: error: WHAT` plus `  hint: WHAT TO DO` on stderr (or a
JSON object on stdout with --json), and the error category's exit code. A
traceback only with --debug.
"""

import errno
import logging
import sys
import traceback
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from typer._click import exceptions as clicks

from imgtool import __version__
from imgtool.cli import gallery_cmds, guest_cmds, remote_cmds, store_cmds, trust_cmds, version_cmds, vm_cmds
from imgtool.cli.output import State, emit_json
from imgtool.errors import ImgtoolError, InvalidArgument
from imgtool.home import Home
from store.atomic import translate_os_error

app = typer.Typer(
    name="imgtool",
    help="A local disk-image gallery: capture disk images into a deduplicated store, publish them as "
    "versions of image definitions in galleries, and boot VMs from them under QEMU.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(gallery_cmds.gallery_app, name="gallery")
app.add_typer(gallery_cmds.definition_app, name="definition")
app.add_typer(version_cmds.version_app, name="version")
app.add_typer(vm_cmds.vm_app, name="vm")
version_cmds.register(app)
store_cmds.register(app)
remote_cmds.register(app)
trust_cmds.register(app)
guest_cmds.register(app, vm_cmds.vm_app)

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
    ctx.obj = State(Home.at(home), json=json_output, debug=debug)


def report(exc: ImgtoolError) -> None:
    if _flags["json"]:
        emit_json({"error": {"category": exc.category, "message": exc.message, "hint": exc.hint,
                             "exit_code": exc.exit_code}})
    sys.stderr.write(f"imgtool: error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"  hint: {exc.hint}\n")


def run() -> None:
    """Console entry point."""
    try:
        code = app(standalone_mode=False)  # usage errors come back to us, to be reported like the rest
    except clicks.NoArgsIsHelpError as exc:
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
    sys.exit(code if isinstance(code, int) else 0)  # --help and --version return 0


def _internal(exc: Exception) -> NoReturn:
    if _flags["debug"]:
        traceback.print_exc()
    sys.stderr.write(f"imgtool: internal error: {type(exc).__name__}: {exc}\n"
                     "  hint: run again with --debug for the traceback, and report it\n")
    sys.exit(70)
