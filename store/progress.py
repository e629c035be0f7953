"""How long work reports progress: one protocol for every caller (pure).

A progress sink is called with the number of bytes just done; if it also has `set_total`, it is told
the total first, so a progress bar can show a percentage.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, amount: int, /) -> None: ...


def announce_total(progress: Progress | None, total: int) -> None:
    set_total = getattr(progress, "set_total", None)
    if callable(set_total):
        set_total(total)
