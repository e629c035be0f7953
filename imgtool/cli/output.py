"""How imgtool speaks: tables for people, JSON for scripts, progress on a terminal."""

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import typer

from imgtool.home import Home


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


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO = sys.stdout) -> None:
    """A plain aligned table; an empty table says so instead of printing nothing."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    if not cells:
        out.write("(none)\n")
        return
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
    out.write(line.rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


def fields(pairs: Sequence[tuple[str, Any]], out: TextIO = sys.stdout) -> None:
    """Key: value lines for `show` commands."""
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        out.write(f"{key + ':':<{width + 1}} {'-' if value in (None, '') else value}\n")


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
    for line in warnings:
        sys.stderr.write(f"imgtool: warning: {line}\n")
