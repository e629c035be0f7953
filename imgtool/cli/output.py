"""How imgtool speaks: tables for people, JSON for scripts, progress on a terminal.

JSON: every invocation with --json prints exactly ONE document on stdout, at exit. A command
gives its result with emit_json(); an error that follows (verify finding damage, say) is
added to that document as its "error" key, or is the document alone ({"error": {...}}). The
vocabulary every command follows is in imgtool/flows/shapes.py and docs/GUIDE.md.
"""

import json
import shutil
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import typer

from imgtool.flows.shapes import human_bytes
from imgtool.home import Home

WIDTH = 80  # human output fits a classic terminal, or the terminal it is on; --json has the full values


@dataclass
class State:
    """Global options, shared by every command through typer's context."""

    home: Home
    json: bool = False
    debug: bool = False


def state(ctx: typer.Context) -> State:
    obj = ctx.find_root().obj
    assert isinstance(obj, State)
    return obj


_document: list[Any] = []  # the result given by the command, printed by flush_json


def emit_json(value: Any) -> None:
    """Give the command's JSON result; it is printed once, when the command ends."""
    if _document:
        raise AssertionError("a command gave two JSON documents")  # a bug: scripts expect one
    _document.append(value)


def flush_json(error: dict[str, Any] | None) -> None:
    """Print the one document: the result, with the error (if any) under "error"."""
    if not _document and error is None:
        return
    value: Any
    if not _document:
        value = {"error": error}
    elif error is None:
        value = _document[0]
    elif isinstance(_document[0], dict):
        value = {**_document[0], "error": error}
    else:
        value = {"result": _document[0], "error": error}
    _document.clear()
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def text(value: Any) -> str:
    """A value as people read it: never Python's None/True/False or a list's brackets."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(text(v) for v in value) or "-"
    return str(value)


def terminal_width(out: TextIO) -> int:
    """The width human output fits: the terminal's when `out` is one (at least 80), else 80 (piped
    output wraps there; nothing is ever cut)."""
    if out.isatty():
        return max(shutil.get_terminal_size((WIDTH, 24)).columns, WIDTH)
    return WIDTH


def _wrap(cell: str, width: int) -> list[str]:
    return textwrap.wrap(cell, width, break_on_hyphens=False) or [""]


def _widths(headers: Sequence[str], cells: list[list[str]], width: int) -> list[int]:
    """Each column as wide as its widest cell; while the row is wider than `width`, the widest
    column narrows (its cells will wrap), never below its header or 12 columns."""
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    while sum(widths) + 2 * (len(widths) - 1) > width:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= max(len(headers[widest]), 12):
            break  # narrower would wrap every word: let the line run long instead
        widths[widest] -= 1
    return widths


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO | None = None,
          width: int | None = None) -> None:
    """A plain aligned table sized to its content, within the terminal's width (80 when piped): a
    cell longer than its column wraps onto the next lines of that column, so no value is ever cut.
    An empty table says so instead of printing nothing."""
    out = out or sys.stdout
    cells = [[text(c) for c in row] for row in rows]
    if not cells:
        out.write("(none)\n")
        return
    widths = _widths(headers, cells, width or terminal_width(out))
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out.write(line.rstrip() + "\n")
    for row in cells:
        wrapped = [_wrap(c, w) for c, w in zip(row, widths, strict=True)]
        for n in range(max(len(w) for w in wrapped)):
            parts = [(w[n] if n < len(w) else "").ljust(size) for w, size in zip(wrapped, widths, strict=True)]
            out.write("  ".join(parts).rstrip() + "\n")


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO | None = None) -> None:
    """Key: value lines for `show` commands (long values wrap under their value column)."""
    out = out or sys.stdout
    width = max(len(k) for k, _ in pairs)
    room = max(terminal_width(out) - width - 2, 20)
    for key, value in pairs:
        shown = text(value)
        lines = textwrap.wrap(shown, room, break_on_hyphens=False) or ["-"]
        out.write(f"{key + ':':<{width + 1}} {lines[0]}\n")
        for more in lines[1:]:
            out.write(f"{'':<{width + 1}} {more}\n")


class ProgressBar:
    """A progress bar on stderr, only when stderr is a terminal (and never in --json mode)."""

    def __init__(self, label: str, *, enabled: bool, total: int = 0) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.enabled = enabled and sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def set_total(self, total: int) -> None:
        self.total = total

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        rate = human_bytes(int(self.done / max(now - self.started, 1e-6)))
        if self.total <= 0:
            sys.stderr.write(f"\r{self.label} {human_bytes(self.done)} {rate}/s ")
        else:
            fraction = min(self.done / self.total, 1.0)
            bar = "#" * int(fraction * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {fraction:4.0%} {rate}/s ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.done:
            sys.stderr.write("\n")


def warn(warnings: Sequence[str]) -> None:
    """Warnings the library returned (never printed by it): one line each on stderr, also with --json."""
    if isinstance(warnings, str):  # one warning is a list of one: a bare string would print per character
        warnings = [warnings]
    for line in warnings:
        sys.stderr.write(f"imgtool: warning: {line}\n")
