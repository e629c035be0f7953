"""Render one run's results as docs/BENCHMARKS.md.

Everything above ANALYSIS_MARKER is generated; whatever an existing document has below the marker (a
hand-written analysis) is kept when the document is regenerated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchlib import remote
from benchlib.peers import ALL
from benchlib.targets import evaluate, ingest_median

ANALYSIS_MARKER = "<!-- Hand-written analysis below: scripts/bench keeps everything after this line. -->"


def _s(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:.3f} s" if x < 1 else f"{x:.2f} s" if x < 10 else f"{x:.1f} s"


def _mib(n: float | None) -> str:
    return "—" if n is None else f"{n / (1 << 20):,.1f} MiB"


def _rss(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:,.0f} MiB"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _machine(res: dict[str, Any]) -> list[str]:
    rows = [[k, f"`{v}`" if k not in ("cpu", "memory", "disk", "disk read") else v]
            for k, v in res["machine"].items()]
    return ["## Machine", "", *_table(["", ""], rows)]


def _disk(res: dict[str, Any]) -> list[str]:
    p, f = res["disk"]["profile"], res["disk"]["facts"]
    return [
        "## The test disk", "",
        f"- **v1**: {p['virtual_size'] >> 20:,} MiB virtual ext4 (`mkfs.ext4 -d`) holding {f['files']:,} real "
        f"files ({_mib(f['file_bytes'])}) copied from the host's `/usr` (a fixed pseudo-random sample), "
        f"{_mib(f['data_bytes'])} of allocated data; converted to qcow2.",
        f"- **v2**: {f['writes']} scattered writes (4 KiB-2 MiB, 4 KiB-aligned, inside v1's data, bytes taken "
        f"from other real files) changing {_mib(f['changed_bytes'])} = "
        f"{100 * f['changed_bytes'] / f['data_bytes']:.1f}% of the data. imgtool gets them as a VM would: "
        "`qemu-io` writes into the overlay of a VM made from v1, captured incrementally (`vm:NAME`). The "
        "peers get v2 flattened (`v2.raw`, or `v2-flat.qcow2` for qemu-img).",
        f"- Built once and cached in `.cache/bench/disk-{p['name']}/`.", ""]


def _ingest(res: dict[str, Any]) -> list[str]:
    ing = res["ingest"]
    rounds = max((len(v) for v in ing.values()), default=0)
    head = ["tool", "ingest v1 wall", "CPU", "peak RSS", "ingest v2 wall", "CPU", "peak RSS",
            "restore v2 wall", "CPU", "peak RSS", "stored v1+v2", "files", "others"]
    rows = []
    for kind in ALL:
        if kind.key not in ing:
            continue
        cells = [kind.label]
        for step in ("v1", "v2", "restore"):
            cells += [_s(ingest_median(ing, kind.key, step)), _s(ingest_median(ing, kind.key, step, "cpu")),
                      _rss(ingest_median(ing, kind.key, step, "max_rss_kib"))]
        files = ingest_median(ing, kind.key, "files", "")
        cells += [_mib(ingest_median(ing, kind.key, "stored", "")), f"{files:,.0f}" if files is not None else "—"]
        others = [ingest_median(ing, kind.key, step, "others") for step in ("v1", "v2", "restore")]
        cells.append(f"{max(o or 0 for o in others):.2f}")
        rows.append(cells)
    floor = ingest_median(ing, "floor", "v1")
    if floor is not None:
        rows.append(["floor: read v1.qcow2 + BLAKE3 + ingest codec, all cores, nothing written", _s(floor),
                     _s(ingest_median(ing, "floor", "v1", "cpu")),
                     _rss(ingest_median(ing, "floor", "v1", "max_rss_kib")), *[""] * 9])
    written = ingest_median(ing, "floor", "v1_written")
    if written is not None:
        rows.append(["floor, and writing what the codec stores (O_DIRECT, 16 MiB files, fsynced)", _s(written),
                     _s(ingest_median(ing, "floor", "v1_written", "cpu")),
                     _rss(ingest_median(ing, "floor", "v1_written", "max_rss_kib")), *[""] * 9])
    optimized = ingest_median(ing, "imgtool", "optimize")
    notes = [] if optimized is None else [
        f"imgtool's *stored* is after `imgtool optimize` ({_s(optimized)} wall, "
        f"{_s(ingest_median(ing, 'imgtool', 'optimize', 'cpu'))} CPU; before it: "
        f"{_mib(ingest_median(ing, 'imgtool', 'stored_before_optimize', ''))}), and its restore reads the "
        "optimized packs.", ""]
    return [f"## Ingest and restore (median of {rounds} alternating round{'s' * (rounds != 1)})", "",
            "Wall and CPU (user + system, whole process tree) seconds; peak RSS is the largest single process. "
            "Every restore was checked against v2 with `qemu-img compare`. *others*: the most CPU cores that "
            "other processes and kernel threads kept busy during one of the tool's steps (median over rounds); "
            "near 0 means the tool had the machine to itself.", "", *_table(head, rows), *notes]


def _vmnew(res: dict[str, Any]) -> list[str]:
    rows = []
    names = {"256m": "empty ext4, 256 MiB virtual", "4g": "empty ext4, 4 GiB virtual",
             "64g": "empty ext4, 64 GiB virtual", "real": "the v1 disk (4 GiB with files)"}
    for label, per in res["vmnew"].items():
        mine, theirs = per["imgtool"]["median"], per["script"]["median"]
        rows.append([names.get(label, label), _s(mine["wall"]), _s(mine["cpu"]), _rss(mine["max_rss_kib"]),
                     _s(theirs["wall"]), _s(theirs["cpu"]), f"{mine['wall'] / theirs['wall']:.2f}x",
                     f"{max(mine['others'], theirs['others']):.2f}"])
    head = ["image (cached version)", "imgtool vm new", "CPU", "peak RSS", "script", "CPU", "imgtool / script",
            "others"]
    return [f"## VM creation (median of {res['vmnew_runs']} alternating runs, warm page cache)", "",
            "`imgtool vm new NAME --image bench/IMG@1.0.0 --ssh-key KEY --admin-user admin` against "
            "`handmade.sh`: `qemu-img create -f qcow2 -b BASE -F raw` + meta-data/user-data + `cloud-localds`. "
            "The version's base already exists (one untimed `vm new` first).", "", *_table(head, rows)]


def _scale(res: dict[str, Any]) -> list[str]:
    sc = res["scale"]
    rows = [[f"`imgtool {name}`", _s(c["median"]["wall"]), _s(c["median"]["cpu"]), _rss(c["median"]["max_rss_kib"]),
             _s(c["cold"]["wall"]), f"{c['median']['others']:.2f}"] for name, c in sc["commands"].items()]
    first, after = sc.get("first_list"), sc.get("after_publish")
    if first:
        rows.append(["`imgtool version list`, first ever (cold cache, builds the version index)", _s(first["wall"]),
                     _s(first["cpu"]), _rss(first["max_rss_kib"]), "", f"{first['others']:.2f}"])
    if after:
        m = after["median"]
        rows.append(["`imgtool version list` right after one more publish", _s(m["wall"]), _s(m["cpu"]),
                     _rss(m["max_rss_kib"]), "", f"{m['others']:.2f}"])
    rate = sc["versions"] / sc["publish_seconds"]
    return [f"## Scale: {sc['versions']:,} versions in one definition", "",
            f"Made by real publishes through `imgtool.image_versions.publish` ({sc['workers']} processes, "
            f"{sc['publish_seconds']:.1f} s, {rate:,.0f} versions/s), all naming one small stored disk.", "",
            *_table(["command", "warm median wall", "CPU", "peak RSS", "cold (page cache dropped)", "others"],
                    rows)]


def _targets(res: dict[str, Any]) -> list[str]:
    rows = [[t.what, t.measured, "—" if t.value is None else f"{t.value:.3f}{' x' if t.unit == 'x' else ' s'}",
             f"≤ {t.limit}{' x' if t.unit == 'x' else ' s'}", t.verdict,
             "" if t.cpu_value is None else f"{t.cpu_value:.2f} x"] for t in evaluate(res)]
    return ["## Targets (ratios from this run)", "",
            "The verdict is on wall time (or bytes), as the issue states the targets. The last column is the same "
            "ratio on CPU seconds, which a busy machine disturbs less.", "",
            *_table(["target", "imgtool / peer", "value", "limit", "verdict", "CPU ratio"], rows)]


def _how(res: dict[str, Any]) -> list[str]:
    lines = ["## How each tool was run", ""]
    lines += [f"- **{k.label}**: {k.how}" for k in ALL if k.key in res.get("ingest", {})]
    lines += [f"- **{prog}**: not run: {why}" for prog, why in res.get("missing", {}).items()]
    return [*lines, ""]


def _notes(res: dict[str, Any]) -> list[str]:
    cache = ("dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every timed ingest and restore step"
             if res.get("dropped_caches") else "NOT dropped (not permitted): ingest reads may be warm")
    return ["## Notes", "",
            f"- Page cache {cache}; VM creation and the scale commands are timed warm (the scale commands "
            "also once cold).",
            "- Untimed between steps: creating empty repositories; for imgtool, `vm new` from v1 (materializing "
            "its base) and the qemu-io writes into the overlay.",
            "- imgtool reads image data and writes packs and VM bases with O_DIRECT, past the page cache "
            "(docs/DESIGN.md, \"Direct I/O, measured\"), and fsyncs every pack and manifest; an exported file "
            "is written through the page cache and not fsynced, like `qemu-img convert`'s. The peers use their "
            "own defaults (buffered I/O): their output may still be in the page cache when they exit, written "
            "back afterwards (*others*).",
            "- This machine's memory balloon reports free pages to the host: pages the page cache takes after "
            "a cache drop are faulted in again by the host, so the system time of buffered I/O varies up to "
            "5x between otherwise identical steps (kernel copy of 2 GB: 0.5-2.5 CPU-s). Direct I/O does not "
            "touch the page cache and does not vary.",
            f"- imgtool code measured: {res['machine']['imgtool']}. Python's bytecode cache is on for every "
            "imgtool command (`PYTHONPYCACHEPREFIX=.cache/bench/pycache`, `PYTHONDONTWRITEBYTECODE` unset) as on "
            "a normal install; without it each command compiles its modules again (about +0.1 s per command).",
            "- The machine may be shared with other work: the *others* columns say how many cores other processes "
            "and kernel threads (including write-back of the tools' own output) kept busy during each step.",
            "- borg runs with `-e none` (imgtool does not encrypt); restic cannot turn encryption off. borg's "
            "fixed chunker gets `--sparse` (it skips holes when reading); the default chunker cannot.",
            "- restic 0.14 has no sparse restore (it writes the zeros); zstd and borg restore sparse.",
            f"- Medians are per column over {res.get('rounds', '?')} rounds; rounds rotate the order of the tools.",
            ""]


def render(res: dict[str, Any], previous: str | None) -> str:
    title = "# Benchmarks: imgtool against the tools people would otherwise use"
    mode = "quick run (small disk, one round — not the reference numbers)" if res["mode"] == "quick" else \
        "full run"
    lines = [title, "", f"Generated by `{res['command']}` on {res['date']} ({mode}). Reproduce with:", "",
             "```", f"{res['command']}    # as root, from the repository; about "
             f"{'2' if res['mode'] == 'quick' else '30'} minutes", "```", ""]
    lines += _machine(res)
    if res.get("ingest"):
        lines += _disk(res) + _ingest(res)
    if res.get("vmnew"):
        lines += _vmnew(res)
    if res.get("scale"):
        lines += _scale(res)
    lines += remote.render(res)
    lines += _targets(res) + _how(res) + _notes(res)
    kept = previous.split(ANALYSIS_MARKER, 1)[1].lstrip("\n") if previous and ANALYSIS_MARKER in previous else \
        "## Analysis\n\n(none yet)\n"
    return "\n".join(lines) + "\n" + ANALYSIS_MARKER + "\n\n" + kept


def write(res: dict[str, Any], out: Path) -> None:
    previous = out.read_text() if out.is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(res, previous))
