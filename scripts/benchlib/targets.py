"""The issue's speed and size targets, checked against one run's results (ratios from the same run)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

FLAT_LIMIT = 1.25  # "flat across sizes": slowest size's median within 25% of the fastest's


@dataclass(frozen=True)
class Target:
    what: str
    measured: str  # how the value was computed, with the numbers
    value: float | None  # None: not measured in this run
    limit: float
    unit: str  # "x" (ratio) or "s"
    cpu_value: float | None = None  # the same ratio on CPU seconds (less sensitive to a busy machine)

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit

    @property
    def verdict(self) -> str:
        return {None: "not measured", True: "met", False: "**missed**"}[self.met]


def ingest_median(results: dict[str, list[dict[str, Any]]], key: str, step: str, field: str = "wall") -> float | None:
    runs = results.get(key) or []
    if not runs:
        return None
    values = [r[step] if field == "" else r[step][field] for r in runs if step in r]
    if not values:
        return None
    return float(statistics.median(values))


def _ratio(what: str, mine: float | None, theirs: float | None, limit: float, unit: str = "s",
           cpu: tuple[float | None, float | None] = (None, None)) -> Target:
    if mine is None or theirs is None or theirs == 0:
        return Target(what, "—", None, limit, "x")
    cpu_value = cpu[0] / cpu[1] if cpu[0] is not None and cpu[1] else None
    def fmt(v: float) -> str:
        return f"{v:.2f} s" if unit == "s" else f"{v / (1 << 20):.1f} MiB"

    return Target(what, f"{fmt(mine)} / {fmt(theirs)}", mine / theirs, limit, "x", cpu_value)


def _ingest_targets(ing: dict[str, list[dict[str, Any]]]) -> list[Target]:
    def timed(what: str, step: str, peer: str, limit: float, peer_step: str | None = None) -> Target:
        theirs = peer_step or step
        return _ratio(what, ingest_median(ing, "imgtool", step), ingest_median(ing, peer, theirs), limit,
                      cpu=(ingest_median(ing, "imgtool", step, "cpu"), ingest_median(ing, peer, theirs, "cpu")))

    def stored(what: str, mine: str, limit: float) -> Target:
        return _ratio(what, ingest_median(ing, "imgtool", mine, ""), ingest_median(ing, "restic", "stored", ""),
                      limit, unit="B")

    return [
        timed("capture v1 ≤ 0.5 x borg (fixed 4 MiB, lz4) wall", "v1", "borg-fixed", 0.5),
        timed("capture v1 ≤ 1.2 x this machine's floor (read + BLAKE3 + ingest codec, all cores)", "v1", "floor",
              1.2),
        timed("(info) capture v1 vs the floor that also writes what the codec stores", "v1", "floor", 1.2,
              "v1_written"),
        timed("(info, same compression as before) capture v1 vs borg (fixed 4 MiB, zstd,3) wall", "v1",
              "borg-fixed-zstd", 0.5),
        timed("capture VM overlay v2 ≤ 0.2 x borg (fixed) wall", "v2", "borg-fixed", 0.2),
        stored("stored bytes after v1+v2, optimized, ≤ 0.85 x restic's", "stored", 0.85),
        stored("(info) stored bytes after v1+v2 before optimize vs restic's", "stored_before_optimize", 0.85),
        timed("(info) optimize after v1+v2 vs capture of v1", "optimize", "imgtool", 1.0, "v1"),
        timed("materialize v2 (optimized store) ≤ 0.7 x qemu-img convert restore", "restore", "qemu-img", 0.7),
    ]


def _vmnew_targets(vm: dict[str, Any]) -> list[Target]:
    found = []
    for label, per in vm.items():
        mine, theirs = per["imgtool"]["median"], per["script"]["median"]
        found.append(_ratio(f"vm new ({label}) ≤ 1.0 x hand-written script", mine["wall"], theirs["wall"], 1.0,
                            cpu=(mine["cpu"], theirs["cpu"])))
    sized = [per["imgtool"]["median"]["wall"] for label, per in vm.items() if label != "real"]
    if sized:
        found.append(Target("vm new flat across 256 MiB / 4 GiB / 64 GiB (slowest / fastest)",
                            " / ".join(f"{w:.3f} s" for w in sized), max(sized) / min(sized), FLAT_LIMIT, "x"))
    return found


def _scale_targets(scale: dict[str, Any]) -> list[Target]:
    count = scale["versions"]
    cmds = scale["commands"]
    found = []
    for name, limit in (("version list", 0.5), ("version resolve", 0.5), ("--help", 0.3)):
        wall = cmds[name]["median"]["wall"]
        what = f"`imgtool {name}` with {count:,} versions < {limit} s" if name != "--help" else \
            f"`imgtool --help` start-up < {limit} s"
        found.append(Target(what, f"{wall:.3f} s (warm median; cold {cmds[name]['cold']['wall']:.3f} s)", wall,
                            limit, "s"))
    return found


def evaluate(results: dict[str, Any]) -> list[Target]:
    found: list[Target] = []
    if results.get("ingest"):
        found += _ingest_targets(results["ingest"])
    if results.get("vmnew"):
        found += _vmnew_targets(results["vmnew"])
    if results.get("scale"):
        found += _scale_targets(results["scale"])
    return found
