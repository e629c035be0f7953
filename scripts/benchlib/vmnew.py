"""VM creation from a cached version: `imgtool vm new` against a hand-written script doing the same work
(`qemu-img create -b` overlay over the raw base + a NoCloud seed made by `cloud-localds`).

"Cached" means the version's base is already materialized (one untimed `vm new` first), which is the
steady state on a machine that makes VMs from a version. The page cache is not dropped here: both sides
start warm, as they would when someone makes several VMs in a row.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchlib.measure import Sample, Step, log, median_sample, sh, timed
from benchlib.peers import IMGTOOL

SIZES = (("256m", 256 << 20), ("4g", 4 << 30), ("64g", 64 << 30))

HANDMADE = """#!/bin/bash
# What a person would otherwise write: overlay over the base, NoCloud seed with a user and a key.
set -eu
base=$1 dir=$2 name=$3 key=$4
mkdir -p "$dir"
qemu-img create -q -f qcow2 -b "$base" -F raw "$dir/disk-os.qcow2"
cat > "$dir/meta-data" <<EOF
instance-id: $(cat /proc/sys/kernel/random/uuid)
local-hostname: $name
EOF
cat > "$dir/user-data" <<EOF
#cloud-config
hostname: $name
users:
  - name: admin
    sudo: ALL=(ALL) NOPASSWD:ALL
    ssh_authorized_keys:
      - $(cat "$key")
EOF
cloud-localds "$dir/seed.iso" "$dir/user-data" "$dir/meta-data"
"""


def empty_image(cache: Path, label: str, size: int) -> Path:
    """A sparse raw disk with an empty ext4 file system of `size` bytes (cached)."""
    path = cache / "sizes" / f"empty-{label}.raw"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.truncate(size)
        sh(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", tmp])
        tmp.rename(path)
    return path


class VmNewBench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.home = work / "home"
        self.env = {"IMGTOOL_HOME": str(self.home)}
        self.key = work / "key"

    def imgtool(self, *args: str | Path) -> Step:
        return Step([str(IMGTOOL), *map(str, args)], self.env)

    def setup(self, images: dict[str, Path]) -> None:
        """A gallery with one definition per image, each published as 1.0.0 and warmed by one `vm new`."""
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", self.key])
        (self.work / "handmade.sh").write_text(HANDMADE)
        (self.work / "handmade.sh").chmod(0o755)
        sh(self.imgtool("gallery", "create", "bench").argv, env=self.env)
        for label, image in images.items():
            log(f"vm new: publishing the {label} image")
            sh(self.imgtool("definition", "create", f"bench/{label}", "--publisher", "bench", "--offer", label,
                            "--sku", "v", "--os-type", "linux", "--os-state", "generalized").argv, env=self.env)
            # ext4 disks without /etc: no guest OS the audit can read, so the override (recorded).
            sh(self.imgtool("publish", f"bench/{label}", "--version", "1.0.0", "--os-disk", image,
                            "--allow-unaudited").argv, env=self.env)
            sh(self._vm_new(label, "warm").argv, env=self.env)

    def _vm_new(self, label: str, name: str) -> Step:
        return self.imgtool("vm", "new", f"{label}-{name}", "--image", f"bench/{label}@1.0.0", "--ssh-key",
                            f"{self.key}.pub", "--admin-user", "admin")

    def _script(self, image: Path, label: str, name: str) -> Step:
        folder = self.work / "script" / f"{label}-{name}"
        return Step([str(self.work / "handmade.sh"), str(image), str(folder), name, f"{self.key}.pub"])

    def run(self, images: dict[str, Path], runs: int) -> dict[str, dict[str, Any]]:
        """Per image label: samples and medians for imgtool and the script."""
        found: dict[str, dict[str, list[Sample]]] = {k: {"imgtool": [], "script": []} for k in images}
        for i in range(runs):
            for label, image in images.items():
                pair = [("imgtool", self._vm_new(label, f"r{i}")), ("script", self._script(image, label, f"r{i}"))]
                for who, step in pair if i % 2 == 0 else reversed(pair):
                    found[label][who].append(timed(step))
        return {label: {who: {"median": median_sample(s).to_json(), "runs": [x.to_json() for x in s]}
                        for who, s in per.items()} for label, per in found.items()}


def run_vmnew(work: Path, cache: Path, realistic: Path, runs: int) -> dict[str, dict[str, Any]]:
    images = {label: empty_image(cache, label, size) for label, size in SIZES}
    images["real"] = realistic
    bench = VmNewBench(work)
    bench.setup(images)
    log(f"vm new: {runs} alternating runs per image")
    result = bench.run(images, runs)
    shutil.rmtree(work)
    return result
