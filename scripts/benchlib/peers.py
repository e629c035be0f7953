"""imgtool and the tools people would otherwise use, behind one shape: ingest v1, ingest v2, restore v2.

Each contender gets a fresh work folder per round. Work outside the three timed steps (creating a
repository, making a VM and writing the guest's changes into its overlay) is not timed.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

from benchlib.disk import Disks, apply_changes
from benchlib.measure import Step, sh

IMGTOOL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "imgtool"
DEFINITION = "bench/disk"
VM = "v2vm"


class Contender(ABC):
    key: str = ""
    label: str = ""
    needs: tuple[str, ...] = ()  # programs it runs
    how: str = ""  # the commands, for the document

    def __init__(self, disks: Disks, work: Path) -> None:
        self.disks = disks
        self.work = work

    def prepare(self) -> None:  # noqa: B027 (an optional hook: most tools need no set-up)
        """Untimed set-up before v1 (create an empty repository)."""

    def between(self) -> None:  # noqa: B027 (an optional hook)
        """Untimed work between ingesting v1 and v2."""

    def optimize(self) -> Step | None:
        """A timed step after v2 that makes the repository smaller at rest (None: the tool has none)."""
        return None

    @abstractmethod
    def ingest_v1(self) -> Step: ...

    @abstractmethod
    def ingest_v2(self) -> Step: ...

    @abstractmethod
    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        """The restore command writing into folder `out`, and the raw file it produces."""

    @abstractmethod
    def stored(self) -> list[Path]:
        """What counts as stored bytes after v1 and v2."""


class Imgtool(Contender):
    key, label = "imgtool", "imgtool"
    needs = ("qemu-img", "qemu-nbd", "qemu-io")
    how = ("`imgtool publish bench/disk --version 1.0.0 --os-disk v1.qcow2`; v2: `imgtool vm new` from 1.0.0, "
           "qemu-io writes into its overlay, `imgtool publish bench/disk --version 1.0.1 --os-disk vm:v2vm "
           "--os-state generalized` (incremental); then `imgtool optimize` (timed on its own); restore (from the "
           "optimized store): `imgtool version export bench/disk@1.0.1 OUT --format raw`")

    @property
    def env(self) -> dict[str, str]:
        return {"IMGTOOL_HOME": str(self.work / "home")}

    def _cli(self, *args: str | Path) -> Step:
        return Step([str(IMGTOOL), *map(str, args)], self.env)

    def _run(self, *args: str | Path) -> str:
        step = self._cli(*args)
        return sh(step.argv, env=step.env)

    def prepare(self) -> None:
        self._run("gallery", "create", "bench")
        self._run("definition", "create", DEFINITION, "--publisher", "bench", "--offer", "disk", "--sku", "v",
                  "--os-type", "linux", "--os-state", "generalized")

    def ingest_v1(self) -> Step:
        # v1 is an ext4 of /usr files without /etc: no guest OS the audit can read, so the override.
        return self._cli("publish", DEFINITION, "--version", "1.0.0", "--os-disk", self.disks.v1_qcow2,
                         "--allow-unaudited")

    def between(self) -> None:
        self._run("vm", "new", VM, "--image", f"{DEFINITION}@1.0.0")
        apply_changes(self.work / "home" / "vms" / VM / "disk-os.qcow2", "qcow2", self.disks.changes)

    def ingest_v2(self) -> Step:
        return self._cli("publish", DEFINITION, "--version", "1.0.1", "--os-disk", f"vm:{VM}",
                         "--os-state", "generalized", "--allow-unaudited")

    def optimize(self) -> Step:
        return self._cli("optimize")

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return self._cli("version", "export", f"{DEFINITION}@1.0.1", out / "v2.raw", "--format", "raw"), \
            out / "v2.raw"

    def stored(self) -> list[Path]:
        return [self.work / "home" / "store"]


class QemuImg(Contender):
    key, label = "qemu-img", "qemu-img convert -c (zstd)"
    needs = ("qemu-img",)
    how = ("`qemu-img convert -f qcow2 -O qcow2 -c -o compression_type=zstd v1.qcow2 v1.c.qcow2` (v2: from "
           "v2-flat.qcow2); restore: `qemu-img convert -f qcow2 -O raw v2.c.qcow2 OUT`")

    def _convert(self, src: Path, name: str) -> Step:
        return Step(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", "-c", "-o", "compression_type=zstd",
                     str(src), str(self.work / name)])

    def ingest_v1(self) -> Step:
        return self._convert(self.disks.v1_qcow2, "v1.c.qcow2")

    def ingest_v2(self) -> Step:
        return self._convert(self.disks.v2_flat, "v2.c.qcow2")

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return Step(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(self.work / "v2.c.qcow2"),
                     str(out / "v2.raw")]), out / "v2.raw"

    def stored(self) -> list[Path]:
        return [self.work / "v1.c.qcow2", self.work / "v2.c.qcow2"]


class Zstd(Contender):
    key, label = "zstd", "zstd -3 (all cores)"
    needs = ("zstd",)
    threads = os.cpu_count() or 1
    how = f"`zstd -T{threads} -3 v1.raw -o v1.raw.zst` (v2: v2.raw); restore: `zstd -d v2.raw.zst -o OUT`"

    def _pack(self, src: Path, name: str) -> Step:
        return Step(["zstd", "-q", "-f", f"-T{self.threads}", "-3", str(src), "-o", str(self.work / name)])

    def ingest_v1(self) -> Step:
        return self._pack(self.disks.v1_raw, "v1.raw.zst")

    def ingest_v2(self) -> Step:
        return self._pack(self.disks.v2_raw, "v2.raw.zst")

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return Step(["zstd", "-q", "-d", "-f", str(self.work / "v2.raw.zst"), "-o", str(out / "v2.raw")]), \
            out / "v2.raw"

    def stored(self) -> list[Path]:
        return [self.work / "v1.raw.zst", self.work / "v2.raw.zst"]


class Borg(Contender):
    key, label = "borg-default", "borg (default chunker)"
    needs = ("borg",)
    chunker: tuple[str, ...] = ()
    how = ("`borg init -e none`; `borg create REPO::v1 v1.raw` (v2: v2.raw); default buzhash chunker and lz4; "
           "restore: `borg extract --sparse REPO::v2`")

    @property
    def env(self) -> dict[str, str]:
        return {"BORG_BASE_DIR": str(self.work / "base"), "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
                "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}

    def prepare(self) -> None:
        sh(["borg", "init", "-e", "none", self.work / "repo"], env=self.env)

    def _create(self, name: str, src: Path) -> Step:
        return Step(["borg", "create", *self.chunker, f"{self.work / 'repo'}::{name}", src.name], self.env,
                    src.parent)

    def ingest_v1(self) -> Step:
        return self._create("v1", self.disks.v1_raw)

    def ingest_v2(self) -> Step:
        return self._create("v2", self.disks.v2_raw)

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return Step(["borg", "extract", "--sparse", f"{self.work / 'repo'}::v2"], self.env, out), out / "v2.raw"

    def stored(self) -> list[Path]:
        return [self.work / "repo"]


class BorgFixed(Borg):
    key, label = "borg-fixed", "borg (fixed 4 MiB chunker)"
    chunker = ("--chunker-params", "fixed,4194304", "--sparse")
    how = ("`borg create --chunker-params fixed,4194304 --sparse REPO::v1 v1.raw` (v2: v2.raw); lz4 (default); "
           "restore: `borg extract --sparse REPO::v2`")


class BorgFixedZstd(Borg):
    key, label = "borg-fixed-zstd", "borg (fixed 4 MiB, zstd,3)"
    chunker = ("--chunker-params", "fixed,4194304", "--sparse", "--compression", "zstd,3")
    how = ("as borg (fixed 4 MiB) but `--compression zstd,3`: the same compression as imgtool, for a "
           "like-for-like comparison (not in the issue's list)")


class Restic(Contender):
    key, label = "restic", "restic"
    needs = ("restic",)
    how = ("`restic init`; `restic backup v1.raw` (v2: v2.raw), local repository, default compression (auto); "
           "restore: `restic restore latest --target OUT`")

    @property
    def env(self) -> dict[str, str]:
        return {"RESTIC_REPOSITORY": str(self.work / "repo"), "RESTIC_PASSWORD": "bench",
                "RESTIC_CACHE_DIR": str(self.work / "cache")}

    def prepare(self) -> None:
        sh(["restic", "init", "--quiet"], env=self.env)

    def _backup(self, src: Path) -> Step:
        return Step(["restic", "backup", "--quiet", "--host", "bench", src.name], self.env, src.parent)

    def ingest_v1(self) -> Step:
        return self._backup(self.disks.v1_raw)

    def ingest_v2(self) -> Step:
        return self._backup(self.disks.v2_raw)

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return Step(["restic", "restore", "--quiet", "latest", "--target", str(out)], self.env), \
            out / self.disks.v2_raw.name  # restic keeps the relative path it was given

    def stored(self) -> list[Path]:
        return [self.work / "repo"]


class Casync(Contender):
    key, label = "casync", "casync"
    needs = ("casync",)
    how = ("`casync make --store=STORE v1.caibx v1.raw` (v2: v2.raw; default chunk size and compression); "
           "restore: `casync extract --store=STORE v2.caibx OUT`")

    def _make(self, index: str, src: Path) -> Step:
        return Step(["casync", "make", f"--store={self.work / 'store.castr'}", str(self.work / index), str(src)])

    def ingest_v1(self) -> Step:
        return self._make("v1.caibx", self.disks.v1_raw)

    def ingest_v2(self) -> Step:
        return self._make("v2.caibx", self.disks.v2_raw)

    def restore_v2(self, out: Path) -> tuple[Step, Path]:
        return Step(["casync", "extract", f"--store={self.work / 'store.castr'}", str(self.work / "v2.caibx"),
                     str(out / "v2.raw")]), out / "v2.raw"

    def stored(self) -> list[Path]:
        return [self.work / "store.castr", self.work / "v1.caibx", self.work / "v2.caibx"]


ALL: tuple[type[Contender], ...] = (Imgtool, QemuImg, Zstd, BorgFixed, BorgFixedZstd, Borg, Restic, Casync)
