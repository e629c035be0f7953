"""Bit rot: flip one byte in a stored chunk, a pack index, a manifest or a VM base, and prove
`verify --deep` reports exactly what is damaged and exactly which versions and VMs stand on it.

The expected answer is computed independently from the store's structure (which chunks each
disk uses, which manifests each version reaches, which VM uses which base), for random bytes
of random objects; every flip is undone before the next. Then, through the CLI: `vm start`
refuses a damaged base, `vm new` rebuilds it when the chunks are good and refuses when they
are not, and `verify --repair` rebuilds every damaged base.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgtool import maintenance
from imgtool.home import Home
from imgtool.vm import bases
from store.packs import Location, decode_chunk, decode_index, iter_index_files, iter_pack_files, read_frame
from tests.conftest import require_tools
from tests.reliability.harness import (
    CAMPAIGN,
    Run,
    Zygote,
    fake_ssh_key,
    random_pieces,
    record_figures,
    write_raw,
)

pytestmark = [pytest.mark.integration, pytest.mark.campaign]

FLIPS = 160 if CAMPAIGN else 32
DISK = 4 << 20


def ok(run: Run) -> Run:
    assert run.status == 0, run.describe()
    return run


@dataclass
class Layout:
    """Who stands on what, read from the store (the oracle the verify report is checked against)."""

    version_chunks: dict[str, set[str]]  # "g/d@X" -> every chunk hex its disks use
    version_manifests: dict[str, set[str]]  # "g/d@X" -> every manifest hex it reaches
    vm_versions: dict[str, str]  # VM -> "g/d@X"
    vm_bases: dict[str, set[str]]  # VM -> disk hexes of its bases

    @classmethod
    def read(cls, home: Path) -> Layout:
        store = Home.at(home).store
        chunks: dict[str, set[str]] = {}
        manifests: dict[str, set[str]] = {}
        for (g, d, v), record in store.list_names("versions"):
            label = f"{g}/{d}@{v}"
            body = store.get_manifest(record)
            manifests[label] = {record.split(":")[1], *(link.split(":")[1] for link in body["links"])}
            chunks[label] = set()
            for disk in body["disks"]:
                chunks[label] |= store.get_disk(disk["digest"]).chunk_digests()
        vm_versions, vm_bases = {}, {}
        for record_path in sorted((home / "vms").glob("*/vm.json")):
            record = json.loads(record_path.read_text())
            vm_versions[record["name"]] = record["image"]
            vm_bases[record["name"]] = {b.split(":")[1] for b in record["base_disks"]}
        return cls(chunks, manifests, vm_versions, vm_bases)

    def hit_by_chunks(self, damaged: set[str]) -> tuple[list[str], list[str]]:
        versions = sorted(v for v, used in self.version_chunks.items() if used & damaged)
        return versions, sorted(vm for vm, v in self.vm_versions.items() if v in versions)

    def hit_by_manifest(self, damaged: str) -> tuple[list[str], list[str]]:
        versions = sorted(v for v, reached in self.version_manifests.items() if damaged in reached)
        return versions, sorted(vm for vm, v in self.vm_versions.items() if v in versions)


def build_home(zygote: Zygote, home: Path, work: Path) -> dict[str, Path]:
    """Three versions (two share most chunks; one has a data disk) and a VM on two of them. The disks are
    random pieces, no guest OS the audit can read: published with --allow-unaudited."""
    rng = random.Random(21)
    a = random_pieces(rng, DISK, 8)
    a2 = {**dict(list(a.items())[:6]), **random_pieces(rng, DISK, 2)}
    files = {"a": write_raw(work / "a.raw", DISK, a), "a2": write_raw(work / "a2.raw", DISK, a2),
             "b": write_raw(work / "b.raw", DISK, random_pieces(rng, DISK, 6)),
             "c": write_raw(work / "c.raw", DISK // 2, random_pieces(rng, DISK // 2, 3)), "key": work / "id.pub"}
    files["key"].write_text(fake_ssh_key() + "\n")
    key = str(files["key"])
    for argv in (["gallery", "create", "g"],
                 ["definition", "create", "g/d", "--publisher", "p", "--offer", "o", "--sku", "s",
                  "--os-type", "linux", "--os-state", "generalized"],
                 ["publish", "g/d", "--version", "1.0.0", "--os-disk", str(files["a"]), "--allow-unaudited"],
                 ["publish", "g/d", "--version", "1.0.1", "--os-disk", str(files["a2"]), "--allow-unaudited"],
                 ["publish", "g/d", "--version", "2.0.0", "--os-disk", str(files["b"]), "--allow-unaudited",
                  "--data-disk", f"0={files['c']}"],
                 ["vm", "new", "va", "--image", "g/d@1.0.0", "--ssh-key", key],
                 ["vm", "new", "vb", "--image", "g/d@2.0.0", "--ssh-key", key]):
        ok(zygote.run(argv, home=home))
    return files


def flip(path: Path, offset: int) -> int:
    """XOR one byte with 0xFF (root writes through the 0444 mode); returns the old byte."""
    with open(path, "r+b") as handle:
        handle.seek(offset)
        old = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([old ^ 0xFF]))
    return old


def unflip(path: Path, offset: int, old: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes([old]))


def verify_hits(home: Path) -> tuple[bool, list[str], list[str], set[tuple[str, str]]]:
    """verify --deep (in-process): clean?, versions hit, VMs hit, and the (kind, object) damaged."""
    report, hit = maintenance.verify(Home.at(home), deep=True)
    return report.ok, hit["versions"], hit["vms"], {(p.kind, p.object) for p in report.problems}


@pytest.mark.parametrize("optimized", [False, True], ids=["as captured", "after optimize"])
def test_single_byte_flips_are_found_and_attributed(zygote: Zygote, tmp_path: Path, optimized: bool) -> None:
    require_tools("qemu-img")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    build_home(zygote, home, work)
    if optimized:  # chunks now live in frames that span several of them
        ok(zygote.run(["optimize"], home=home))
    oracle = Layout.read(home)
    store = Home.at(home).store
    layout = store.layout
    rng = random.Random(1234)
    figures: Counter[str] = Counter()
    packs = list(iter_pack_files(layout))
    indexes = list(iter_index_files(layout))
    manifests = sorted(p for p in layout.manifests.glob("*/*"))
    base_files = bases.all_bases(Home.at(home))
    entries = {i.stem: decode_index(i.read_bytes(), what=i.name)[1] for i in indexes}
    for n in range(FLIPS):
        kind = ("chunk", "index", "manifest", "base")[n % 4]
        if kind == "chunk":
            path = rng.choice(packs)
            offset = rng.randrange(path.stat().st_size)
            members = [e for e in entries[path.stem] if e.offset <= offset < e.offset + e.clen]
            # One-chunk frame: that chunk. Span: some of its chunks (those the flipped byte reaches).
            in_frame = {("chunk", e.raw.hex()) for e in members}
        elif kind == "index":
            path = rng.choice(indexes)
            offset = rng.randrange(path.stat().st_size)
            listed = {e[0].hex() for e in entries[path.stem]}
            expected = oracle.hit_by_chunks(listed)
            used = set().union(*oracle.version_chunks.values())
            damaged = {("index", path.name)} | {("chunk", c) for c in listed & used}
        elif kind == "manifest":
            path = rng.choice(manifests)
            offset = rng.randrange(path.stat().st_size)
            expected = oracle.hit_by_manifest(path.name)
            damaged = {("manifest", path.name)}
        else:
            path = rng.choice(base_files)
            offset = rng.randrange(path.stat().st_size)
            expected = ([], sorted(vm for vm, used in oracle.vm_bases.items() if path.stem in used))
            damaged = {("base", path.stem)}
        old = flip(path, offset)
        try:
            clean, versions, vms, problems = verify_hits(home)
            if clean and kind == "chunk":
                # A byte zstd does not need (rare): harmless only if the chunks still read back exact.
                for entry in members:
                    location = Location.of(path.stem, entry)
                    decode_chunk(read_frame(layout, location), location, entry.raw)
                figures["flips that changed nothing"] += 1
                continue
            assert not clean, f"flip in {kind} {path.name}@{offset} went unnoticed"
            if kind == "chunk":
                assert problems and problems <= in_frame, f"{path.name}@{offset}: reported {problems}"
                damaged = problems
                expected = oracle.hit_by_chunks({chunk for _kind, chunk in problems})
            assert problems == damaged, f"{kind} {path.name}@{offset}: reported {problems}"
            assert (versions, vms) == expected, f"{kind} {path.name}@{offset}: {versions, vms} != {expected}"
            figures[f"{kind} corruptions detected"] += 1
            figures["corruptions detected"] += 1
        finally:
            unflip(path, offset, old)
    clean, *_ = verify_hits(home)
    assert clean
    record_figures("bit rot: single-byte flips", dict(figures))
    assert figures["corruptions detected"] >= FLIPS - 2


def test_damaged_bases_are_refused_rebuilt_and_repaired(zygote: Zygote, tmp_path: Path) -> None:
    require_tools("qemu-img")
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    files = build_home(zygote, home, work)
    h = Home.at(home)
    record = json.loads((home / "vms" / "va" / "vm.json").read_text())
    base = Path(record["disks"][0]["base"])
    disk = h.store.get_disk(record["disks"][0]["base_disk"])
    data_offset = min(disk.chunks) * disk.chunk_size + 100

    # verify --deep names the damaged base and the VMs on it, exit 6.
    flip(base, data_offset)
    report = zygote.run(["verify", "--deep"], home=home)
    assert report.status == 6 and report.one_line_error(), report.describe()
    assert f"DAMAGED base {base.stem[:16]}" in report.stdout and "affected vms: va" in report.stdout

    # vm start refuses it (before any QEMU is started).
    start = zygote.run(["vm", "start", "va"], home=home)
    assert start.status == 6 and start.one_line_error(), start.describe()
    assert "is damaged" in start.stderr and "verify --repair" in start.stderr

    # vm new from the same version rebuilds it from the (good) chunks.
    ok(zygote.run(["vm", "new", "vc", "--image", "g/d@1.0.0", "--ssh-key", str(files["key"])], home=home))
    assert bases.damage(base, disk) is None

    # verify --repair rebuilds every damaged base (here: a byte in a hole of another base).
    other = Path(json.loads((home / "vms" / "vb" / "vm.json").read_text())["disks"][1]["base"])
    flip(other, other.stat().st_size - 1)
    flip(base, data_offset)
    repaired = ok(zygote.run(["verify", "--repair"], home=home))
    assert repaired.stdout.count("rebuilt base") == 2
    assert ok(zygote.run(["verify", "--deep"], home=home)).stdout.startswith("ok:")

    # When the chunks themselves are damaged, a base cannot be rebuilt: vm new refuses, cleanly.
    pack_hex, chunk = next((pack_hex, e) for pack_hex, entries in
                           (decode_index(i.read_bytes(), what=i.name) for i in iter_index_files(h.store.layout))
                           for e in entries if e[0].hex() in disk.chunk_digests())
    flip(h.store.layout.pack(pack_hex), chunk[1] + chunk[2] // 2)
    flip(base, data_offset)
    refused = zygote.run(["vm", "new", "vd", "--image", "g/d@1.0.0", "--ssh-key", str(files["key"])], home=home)
    assert refused.status == 6 and refused.one_line_error(), refused.describe()
    assert not (home / "vms" / "vd").exists()
